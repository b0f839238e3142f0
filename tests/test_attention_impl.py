"""model.attention_impl: every kernel equals the XLA reference on CPU (forward and gradients w.r.t. q, k, v) for
packed documents with padding, causal and bidirectional attention, local and global layers (is_global traced) and
grouped-query attention; the Pallas kernels in interpret mode, cuDNN's arguments through XLA (cuDNN needs a GPU).
And resolve_attention_impl: auto's choice per backend, and the combinations it rejects before compiling."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.model import attention_kernels as kernels
from pretrain.model.attention_kernels import Window, resolve_attention_impl, xla_attention
from pretrain.model.heads import LanguageModel
from pretrain.runtime.errors import ConfigError
from tests.helpers import rejected_before_compiling, tiny_config, tiny_model_config

TOLERANCE = 2e-5  # float32; the kernels sum in another order
HALF_WIDTH = 4


def _segments(length: int) -> jax.Array:
  """[2, length]: three documents and padding; two documents and more padding."""
  unit = length // 16
  row0 = [1] * (5 * unit) + [2] * (7 * unit) + [3] * (3 * unit) + [0] * unit
  row1 = [1] * (2 * unit) + [2] * (10 * unit) + [0] * (4 * unit)
  return jnp.asarray([row0, row1], jnp.int32)


def _qkv(length: int, heads: int, kv_heads: int, head_dim: int = 16):
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (2, length, heads, head_dim))
  k, v = (jax.random.normal(key, (2, length, kv_heads, head_dim)) for key in keys[1:3])
  return q, k, v, jax.random.normal(keys[3], q.shape)


def _max_difference(kernel, length, heads, kv_heads, causal, local, **kernel_kwargs) -> float:
  """max |kernel - xla_attention| over the output and its gradients w.r.t. q, k, v; with `local`, of a local
  and a global layer (is_global traced: one compiled program for both)."""
  q, k, v, cotangent = _qkv(length, heads, kv_heads)
  segments = _segments(length)

  def output_and_grads(attend, **kwargs):
    @jax.jit
    def run(q, k, v, is_global):
      window = Window(HALF_WIDTH, is_global) if local else None
      loss = lambda q, k, v: jnp.sum(attend(q, k, v, segments, causal=causal, window=window, **kwargs) * cotangent)
      return attend(q, k, v, segments, causal=causal, window=window, **kwargs), jax.grad(loss, (0, 1, 2))(q, k, v)
    return [run(q, k, v, jnp.asarray(is_global)) for is_global in ((False, True) if local else (True,))]

  ours, reference = output_and_grads(kernel, **kernel_kwargs), output_and_grads(xla_attention)
  return max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference)))


# (causal, local: a local and a global layer, kv heads of 4)
CASES = [(True, False, 2), (False, False, 4), (False, True, 2), (True, True, 1)]


@pytest.mark.parametrize('causal, local, kv_heads', CASES)
def test_cudnn_arguments_give_the_reference_through_xla(causal, local, kv_heads):
  """The mask, is_causal and local_window_size cudnn_attention passes, run by XLA's implementation."""
  difference = _max_difference(kernels.cudnn_attention, 32, 4, kv_heads, causal, local, implementation='xla')
  assert difference <= TOLERANCE


@pytest.mark.parametrize('causal, kv_heads', [(True, 2), (False, 1)])
def test_pallas_gpu_equals_the_reference_in_interpret_mode(causal, kv_heads):
  difference = _max_difference(kernels.pallas_gpu_attention, 64, 4, kv_heads, causal, False, interpret=True)
  assert difference <= TOLERANCE


@pytest.mark.parametrize('causal, local, kv_heads', [(True, False, 2), (False, True, 2), (True, True, 1)])
def test_splash_equals_the_reference_in_interpret_mode(causal, local, kv_heads):
  """Splash's blocks are multiples of 128 tokens: length 128."""
  difference = _max_difference(kernels.splash_attention, 128, 4, kv_heads, causal, local, interpret=True)
  assert difference <= TOLERANCE


def test_the_local_window_is_really_applied():
  """A guard on the cases above: with the window, the reference differs from the global layer's."""
  q, k, v, _ = _qkv(32, 4, 2)
  local, full = (xla_attention(q, k, v, _segments(32), causal=False, window=Window(HALF_WIDTH, jnp.asarray(g)))
                 for g in (False, True))
  assert float(jnp.max(jnp.abs(local - full))) > 0.1


@pytest.mark.parametrize('kind, impl', [('llama', 'pallas_gpu'), ('modernbert', 'splash')])
def test_the_whole_model_gives_the_reference_logits(monkeypatch, kind, impl):
  """LanguageModel with a Pallas kernel (kernels.PALLAS_INTERPRET) against the same parameters with xla: llama
  (causal, grouped-query attention), modernbert (local and global layers) at splash's 128 tokens."""
  length = 32 if impl == 'pallas_gpu' else 128
  overrides = dict(max_position_embeddings=length, dropout_rate=0.0)
  tokens = jax.random.randint(jax.random.key(1), (2, length), 5, 512)
  segments = _segments(length)
  reference = LanguageModel(tiny_model_config(kind, attention_impl='xla', **overrides), nnx.Rngs(0))
  expected = reference(tokens, segment_ids=segments)
  monkeypatch.setattr(kernels, 'PALLAS_INTERPRET', True)
  model = LanguageModel(tiny_model_config(kind, attention_impl=impl, **overrides), nnx.Rngs(0))
  assert np.abs(np.asarray(model(tokens, segment_ids=segments) - expected)).max() <= 1e-4


@pytest.mark.parametrize('backend, overrides, expected', [
    ('cpu', {}, 'xla'),
    ('gpu', dict(dtype='bfloat16'), 'cudnn'),
    ('gpu', {}, 'pallas_gpu'),  # float32: not cuDNN
    ('gpu', dict(local_window=8, global_every=3), 'xla'),  # modernbert-like in float32: neither fused kernel
    ('gpu', dict(local_window=8, global_every=3, dtype='bfloat16'), 'cudnn'),
    ('tpu', dict(local_window=8, global_every=3), 'splash'),
    ('tpu', dict(attention_dropout_rate=0.1), 'xla'),
    ('gpu', dict(attention_dropout_rate=0.1, dtype='bfloat16'), 'xla'),
])
def test_auto_picks_the_fastest_kernel_that_supports_the_model(backend, overrides, expected):
  assert resolve_attention_impl(tiny_model_config('llama', attention_impl='auto', **overrides), backend) == expected


@pytest.mark.parametrize('impl, backend, overrides, match', [
    ('splash', 'cpu', {}, 'needs a TPU'),
    ('splash', 'gpu', {}, 'needs a TPU'),
    ('cudnn', 'cpu', dict(dtype='bfloat16'), 'needs a GPU'),
    ('cudnn', 'tpu', dict(dtype='bfloat16'), 'needs a GPU'),
    ('cudnn', 'gpu', {}, 'bfloat16 or float16'),
    ('cudnn', 'gpu', dict(dtype='bfloat16', head_dim=12), 'multiple of 8'),
    ('pallas_gpu', 'cpu', {}, 'needs a GPU'),
    ('pallas_gpu', 'gpu', dict(local_window=8, global_every=3), 'no local window'),
    ('splash', 'tpu', dict(attention_dropout_rate=0.1), 'no attention dropout'),
    ('pallas_gpu', 'gpu', dict(attention_dropout_rate=0.1), 'no attention dropout'),
])
def test_unsupported_combinations_name_the_field(impl, backend, overrides, match):
  cfg = tiny_model_config('llama', attention_impl=impl, **overrides)
  with pytest.raises(ConfigError, match=rf"model\.attention_impl: '{impl}' .*{match}"):
    resolve_attention_impl(cfg, backend)
  assert resolve_attention_impl(dataclasses.replace(cfg, attention_impl='xla'), backend) == 'xla'


def test_an_unknown_implementation_is_a_config_error():
  with pytest.raises(ConfigError, match=r"model\.attention_impl: 'flash' is not one of"):
    tiny_model_config('llama', attention_impl='flash')


def test_a_training_run_rejects_splash_on_cpu_before_compiling(monkeypatch, tmp_path):
  rejected_before_compiling(monkeypatch, tiny_config('llama', attention_impl='splash'), tmp_path,
                            r"model\.attention_impl: 'splash' needs a TPU")


def test_fused_kernels_refuse_the_kv_cache_and_dropout():
  q, k, v, _ = _qkv(32, 4, 2)
  with pytest.raises(ValueError, match='xla_attention'):
    kernels.cudnn_attention(q, k, v, None, causal=True, cache_index=jnp.asarray(0), implementation='xla')
  with pytest.raises(ValueError, match='xla_attention'):
    kernels.pallas_gpu_attention(q, k, v, _segments(32), causal=True, dropout_rate=0.1,
                                 dropout_key=jax.random.key(0), interpret=True)
