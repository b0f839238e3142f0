"""Tests run on 8 fake CPU devices; the flag must be set before jax is imported anywhere."""
import os

# The 8 fake devices are threads on (in CI) 2 cores: when the machine is busy a collective can wait for its
# threads longer than XLA's 40 s default, which aborts the process; give it 10 minutes.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8'
                           ' --xla_cpu_collective_call_terminate_timeout_seconds=600'
                           ' --xla_cpu_collective_timeout_seconds=600').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def fresh_cache(tmp_path_factory):
  """Each test module gets its own tokenizer/corpus cache (FLAX_PRETRAIN_CACHE), never ~/.cache."""
  path = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FLAX_PRETRAIN_CACHE', str(path))
    yield path
