"""Tests run on 8 fake CPU devices; the flag must be set before jax is imported anywhere.

Two tiers: `python -m pytest -m "not slow"` (the fast tier, while working) and the whole suite (README's test
command, what CI runs). Expensive material is made once per session and shared: the built-in corpus and the
tokenizers trained on it (one FLAX_PRETRAIN_CACHE for the session), and tiny pretraining checkpoints
(`checkpoints`, tests/checkpoint_fixtures.py). Which test covers which README claim: tests/README.md.
"""
import atexit
import os
import shutil
import tempfile

# The 8 fake devices are threads on (in CI) 2 cores: when the machine is busy a collective can wait for its
# threads longer than XLA's 40 s default, which aborts the process; give it 10 minutes.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
                           ' --xla_cpu_collective_timeout_seconds=600').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Most tests compile the same tiny programs (and every restart of a killed run compiles its program again): one
# persistent XLA compilation cache for the session, which the tests' subprocesses inherit. A hit returns the
# executable the same program compiled to before, so results do not change; compiling is most of a tiny run's time.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(prefix='flax-pretrain-tests-xla-cache-')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'], ignore_errors=True)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '-1'

import pytest  # noqa: E402

from tests.checkpoint_fixtures import CheckpointFactory  # noqa: E402


@pytest.fixture(autouse=True, scope='session')
def shared_cache(tmp_path_factory):
  """One corpus/tokenizer cache (FLAX_PRETRAIN_CACHE) for the whole session, never ~/.cache: the built-in
  corpus is extracted, and a tokenizer trained on it, once. Subprocesses inherit it through the environment."""
  path = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FLAX_PRETRAIN_CACHE', str(path))
    yield path


@pytest.fixture
def empty_cache(tmp_path_factory, monkeypatch):
  """An empty cache of its own, for a test that counts what gets cached."""
  path = tmp_path_factory.mktemp('empty_cache')
  monkeypatch.setenv('FLAX_PRETRAIN_CACHE', str(path))
  return path


@pytest.fixture(scope='session')
def checkpoints(tmp_path_factory, shared_cache) -> CheckpointFactory:
  """checkpoints(objective, steps=..., learning_rate=...) -> the workdir of a tiny pretraining run, made once per
  session. Read only: a test that writes into a workdir copies it first."""
  del shared_cache  # the factory's runs use (and fill) the session cache
  return CheckpointFactory(tmp_path_factory.mktemp('checkpoints'))
