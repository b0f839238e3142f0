"""Tests run on 8 fake CPU devices; the flag must be set before jax is imported anywhere."""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope='module')
def fresh_cache(tmp_path_factory):
  """Each test module gets its own tokenizer/corpus cache (FLAX_PRETRAIN_CACHE), never ~/.cache."""
  path = tmp_path_factory.mktemp('cache')
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv('FLAX_PRETRAIN_CACHE', str(path))
    yield path
