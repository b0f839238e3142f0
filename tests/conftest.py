"""Tests run on 8 fake CPU devices; the flag must be set before jax is imported anywhere.

Two tiers: `python -m pytest -m "not slow"` (the fast tier, while working) and the whole suite (README's test
command, what CI runs). Expensive material is made once per session and shared: the built-in corpus and the
tokenizers trained on it (one FLAX_PRETRAIN_CACHE for the session), and tiny pretraining checkpoints
(`checkpoints`, tests/checkpoint_fixtures.py). Which test covers which README claim: tests/README.md.
"""
import os

# The 8 fake devices are threads on (in CI) 2 cores: when the machine is busy a collective can wait for its
# threads longer than XLA's 40 s default, which aborts the process; give it 10 minutes.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
                           ' --xla_cpu_collective_timeout_seconds=600').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

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
