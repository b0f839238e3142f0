"""The attention kernels model.attention_impl chooses among, all with xla_attention's signature, and the choice.

  xla         the reference: a dense mask from the segment ids; attention dropout; the KV cache (decoding)
  cudnn       cuDNN flash attention (jax.nn.dot_product_attention implementation='cudnn'), bfloat16/float16 only.
              cuDNN has no segment ids: the same-segment mask goes in as a dense [batch, 1, q, k] mask (cuDNN adds
              it as a bias); causality as is_causal; its sliding window is one-sided, so a causal local layer
              passes local_window_size and a bidirectional one puts the window into the mask.
  pallas_gpu  jax's Pallas (Triton) flash attention with segment ids; causal; kv heads repeated for GQA; no window
  splash      TPU splash attention: segment ids, causal and local masks, GQA as MQA per kv head
  auto        the fastest of these that supports the model on the backend in use (AUTO_ORDER)

segment_ids [batch, length]: 1, 2, ... per packed document, 0 for padding (see attention_mask). A local layer's
window is Window(half_width, is_global), is_global traced inside the layer scan: the kernels whose mask is static
call a global and a local kernel under lax.cond. The Pallas kernels run per device shard (jax.shard_map over the
mesh's batch and head axes): a Pallas call has no partitioning rule of its own.

Attention dropout and the KV cache are the xla kernel's alone (resolve_attention_impl; Attention).
"""
import functools
from typing import Callable, NamedTuple

import flax.core.spmd
import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash

from pretrain.model.config import ATTENTION_IMPLS, ModelConfig
from pretrain.model.layers import dropout
from pretrain.runtime.errors import require
from pretrain.runtime.sharding import fitted_spec

# auto's preference per backend (jax.default_backend()); the first that supports the model wins, else xla.
# On GPU cuDNN first (NVIDIA's tuned kernel), then the Pallas (Triton) one, which takes float32 and segment ids.
AUTO_ORDER = {'gpu': ('cudnn', 'pallas_gpu'), 'tpu': ('splash',)}
PALLAS_IMPLS = ('pallas_gpu', 'splash')
# Tests only: True runs the Pallas kernels in interpret mode, and kernel_backend() answers 'interpret', the
# pseudo-backend on which resolve_attention_impl accepts them (on CPU, slowly).
PALLAS_INTERPRET = False


class Window(NamedTuple):
  """A layer's local attention: is_global (a traced bool inside the layer scan) lifts the window."""
  half_width: int
  is_global: jax.Array


def kernel_backend() -> str:
  """The backend resolve_attention_impl answers for: jax.default_backend(), or 'interpret' (PALLAS_INTERPRET)."""
  return 'interpret' if PALLAS_INTERPRET else jax.default_backend()


def resolve_attention_impl(cfg: ModelConfig, backend: str) -> str:
  """model.attention_impl made concrete for `backend` ('cpu', 'gpu', 'tpu' or 'interpret'): auto picks the first
  of AUTO_ORDER[backend] that supports cfg (else xla); an explicit kernel that cannot run cfg there is a
  ConfigError naming model.attention_impl. Pure and cheap: called before compiling and at trace time."""
  impl = cfg.attention_impl
  require(impl in ATTENTION_IMPLS, f'model.attention_impl: {impl!r} is not one of {ATTENTION_IMPLS}')
  if impl == 'auto':
    return next((name for name in AUTO_ORDER.get(backend, ()) if _unsupported(cfg, name, backend) is None), 'xla')
  problem = _unsupported(cfg, impl, backend)
  require(problem is None, f'model.attention_impl: {impl!r} {problem}; use auto or xla')
  return impl


def _unsupported(cfg: ModelConfig, impl: str, backend: str) -> str | None:
  """Why `impl` cannot run cfg on backend, or None."""
  if impl == 'xla':
    return None
  if cfg.attention_dropout_rate > 0:
    return f'has no attention dropout (model.attention_dropout_rate {cfg.attention_dropout_rate})'
  if impl == 'cudnn':
    if backend != 'gpu':
      return f'needs a GPU (the backend is {backend})'
    if cfg.dtype not in ('bfloat16', 'float16'):
      return f'needs model.dtype bfloat16 or float16 (got {cfg.dtype})'
    if cfg.head_dim % 8 or cfg.head_dim > 256:
      return f'needs model.head_dim a multiple of 8 and at most 256 (128 before Hopper), got {cfg.head_dim}'
  if impl == 'pallas_gpu':
    if backend not in ('gpu', 'interpret'):
      return f'needs a GPU (the backend is {backend})'
    if cfg.has_local_layers:
      return f'has no local window (model.local_window {cfg.local_window}): use cudnn or xla'
  if impl == 'splash' and backend not in ('tpu', 'interpret'):
    return f'needs a TPU (the backend is {backend})'
  return None


def attention_mask(segment_ids_bt: jax.Array | None, causal: bool, cache_index: jax.Array | None = None,
                   q_length: int = 0, kv_length: int = 0, window: Window | None = None) -> jax.Array:
  """[batch or 1, 1, q, k] bool. Without a cache, q and k are the same tokens: a token sees only its own packed
  segment (and, if causal, not the future; within a local window, only its neighbours). With a KV cache
  (cache_index given), k are the cache's kv_length slots holding one document, query i sits in slot
  cache_index + i and sees the slots up to its own."""
  if cache_index is not None:
    q_slots_t = cache_index + jnp.arange(q_length, dtype=jnp.int32)
    return (q_slots_t[:, None] >= jnp.arange(kv_length, dtype=jnp.int32)[None, :])[None, None]
  mask_b1tt = segment_ids_bt[:, None, :, None] == segment_ids_bt[:, None, None, :]
  length = segment_ids_bt.shape[-1]
  if causal:
    mask_b1tt = mask_b1tt & jnp.tril(jnp.ones((length, length), dtype=bool))
  if window is not None:
    # Within a document positions are consecutive, so the distance in positions is the distance in slots.
    index_t = jnp.arange(length, dtype=jnp.int32)
    near_tt = jnp.abs(index_t[:, None] - index_t[None, :]) <= window.half_width
    mask_b1tt = mask_b1tt & (near_tt | window.is_global)
  return mask_b1tt


def xla_attention(q_btnh: jax.Array, k_bsnh: jax.Array, v_bsnh: jax.Array, segment_ids_bt: jax.Array | None, *,
                  causal: bool, cache_index: jax.Array | None = None, window: Window | None = None,
                  dropout_rate: float = 0.0, dropout_key: jax.Array | None = None) -> jax.Array:
  """The reference kernel: softmax(q.k / sqrt(h) masked) . v, [batch, length, heads, head_dim].

  k and v may have fewer heads than q (grouped-query attention): query head i reads kv head i // groups.
  Without cache_index they are the same tokens as q; with it, a KV cache's slots (see attention_mask; the
  segment ids are then unused).
  Dropout on the attention probabilities (dropout_key given and dropout_rate > 0) needs them materialised: an
  explicit softmax in float32. Otherwise jax.nn.dot_product_attention's XLA implementation.
  """
  mask_b1ts = attention_mask(segment_ids_bt, causal, cache_index, q_btnh.shape[1], k_bsnh.shape[1], window)
  if dropout_key is None or dropout_rate == 0.0:
    return jax.nn.dot_product_attention(q_btnh, k_bsnh, v_bsnh, mask=mask_b1ts)
  head_dim = q_btnh.shape[-1]
  groups = q_btnh.shape[2] // k_bsnh.shape[2]
  k_bsnh, v_bsnh = jnp.repeat(k_bsnh, groups, axis=2), jnp.repeat(v_bsnh, groups, axis=2)
  scores_bnts = jnp.einsum('btnh,bsnh->bnts', q_btnh, k_bsnh) / jnp.sqrt(head_dim).astype(q_btnh.dtype)
  scores_bnts = jnp.where(mask_b1ts, scores_bnts.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  probs_bnts = dropout(jax.nn.softmax(scores_bnts, axis=-1), dropout_rate, dropout_key).astype(v_bsnh.dtype)
  return jnp.einsum('bnts,bsnh->btnh', probs_bnts, v_bsnh)


def cudnn_attention(q_btnh: jax.Array, k_bsnh: jax.Array, v_bsnh: jax.Array, segment_ids_bt: jax.Array, *,
                    causal: bool, cache_index: jax.Array | None = None, window: Window | None = None,
                    dropout_rate: float = 0.0, dropout_key: jax.Array | None = None,
                    implementation: str = 'cudnn') -> jax.Array:
  """cuDNN flash attention (see the module docstring for how the mask maps onto it); GQA natively.
  implementation 'xla' runs the same arguments through XLA (the tests, on CPU)."""
  _check_fused('cudnn', cache_index, dropout_rate, dropout_key)
  attend = functools.partial(jax.nn.dot_product_attention, is_causal=causal, implementation=implementation)
  if causal and window is not None:  # cuDNN's window: (left, 0), the keys no more than left positions back
    mask_b1ts = attention_mask(segment_ids_bt, False)
    return _by_window(window, lambda *a: attend(*a, mask=mask_b1ts),
                      lambda *a: attend(*a, mask=mask_b1ts, local_window_size=(window.half_width, 0)),
                      q_btnh, k_bsnh, v_bsnh)
  return attend(q_btnh, k_bsnh, v_bsnh, mask=attention_mask(segment_ids_bt, False, window=window))


def pallas_gpu_attention(q_btnh: jax.Array, k_bsnh: jax.Array, v_bsnh: jax.Array, segment_ids_bt: jax.Array, *,
                         causal: bool, cache_index: jax.Array | None = None, window: Window | None = None,
                         dropout_rate: float = 0.0, dropout_key: jax.Array | None = None,
                         interpret: bool = False) -> jax.Array:
  """Pallas (Triton) flash attention with segment ids (jax.experimental.pallas.ops.gpu.attention.mha): its
  default blocks (128 forward, 32 backward, capped at the length, which they must divide). No local window."""
  _check_fused('pallas_gpu', cache_index, dropout_rate, dropout_key)
  if window is not None:
    raise ValueError('pallas_gpu attention has no local window (resolve_attention_impl rejects local layers)')

  def kernel(q_btnh, k_bsnh, v_bsnh, segment_ids_bt):
    groups = q_btnh.shape[2] // k_bsnh.shape[2]
    k_bsnh, v_bsnh = jnp.repeat(k_bsnh, groups, axis=2), jnp.repeat(v_bsnh, groups, axis=2)
    return gpu_attention.mha(q_btnh, k_bsnh, v_bsnh, segment_ids_bt, sm_scale=q_btnh.shape[-1] ** -0.5,
                             causal=causal, interpret=interpret)
  return _per_shard(kernel, q_btnh, k_bsnh, v_bsnh, segment_ids_bt)


def splash_attention(q_btnh: jax.Array, k_bsnh: jax.Array, v_bsnh: jax.Array, segment_ids_bt: jax.Array, *,
                     causal: bool, cache_index: jax.Array | None = None, window: Window | None = None,
                     dropout_rate: float = 0.0, dropout_key: jax.Array | None = None,
                     interpret: bool = False) -> jax.Array:
  """TPU splash attention: the MQA kernel per kv head (its query heads: the kv head's group), vmapped over kv
  heads and batch; blocks of min(512, length) (the length a multiple of 128)."""
  _check_fused('splash', cache_index, dropout_rate, dropout_key)

  def kernel(half_width, q_btnh, k_bsnh, v_bsnh, segment_ids_bt):
    batch, length, heads, head_dim = q_btnh.shape
    kv_heads = k_bsnh.shape[2]
    mqa = _splash_kernel(length, heads // kv_heads, causal, half_width, interpret)
    q_bkgth = q_btnh.reshape(batch, length, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
    q_bkgth = q_bkgth * jnp.asarray(head_dim ** -0.5, q_btnh.dtype)  # splash does not scale the logits
    k_bksh, v_bksh = k_bsnh.transpose(0, 2, 1, 3), v_bsnh.transpose(0, 2, 1, 3)
    per_head = lambda q, k, v, segments: mqa(q, k, v, segment_ids=splash.SegmentIds(segments, segments))
    per_example = jax.vmap(per_head, in_axes=(0, 0, 0, None))
    out_bkgth = jax.vmap(per_example)(q_bkgth, k_bksh, v_bksh, segment_ids_bt)
    return out_bkgth.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)

  attend = lambda half_width: lambda *a: _per_shard(functools.partial(kernel, half_width), *a)
  if window is None:
    return attend(None)(q_btnh, k_bsnh, v_bsnh, segment_ids_bt)
  return _by_window(window, attend(None), attend(window.half_width), q_btnh, k_bsnh, v_bsnh, segment_ids_bt)


@functools.lru_cache(maxsize=64)
def _splash_kernel(length: int, heads: int, causal: bool, half_width: int | None, interpret: bool):
  """The splash MQA kernel for one example and kv head (its mask preprocessed once per shape)."""
  shape = (length, length)
  if half_width is not None:
    one_head = splash.LocalMask(shape, (half_width, 0 if causal else half_width), offset=0)
  else:
    one_head = splash.CausalMask(shape) if causal else splash.FullMask(shape)
  block = min(512, length)
  blocks = splash.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                             block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  with jax.ensure_compile_time_eval():  # the mask's block tables: constants, not a caller's tracers
    return splash.make_splash_mqa_single_device(splash.MultiHeadMask([one_head] * heads), block_sizes=blocks,
                                                interpret=interpret)


KERNELS = {'xla': xla_attention, 'cudnn': cudnn_attention, 'pallas_gpu': pallas_gpu_attention,
           'splash': splash_attention}


def attention_kernel(impl: str) -> Callable[..., jax.Array]:
  """The kernel of a resolved implementation (a Pallas one interpreted under PALLAS_INTERPRET)."""
  if impl in PALLAS_IMPLS and PALLAS_INTERPRET:
    return functools.partial(KERNELS[impl], interpret=True)
  return KERNELS[impl]


def _check_fused(impl: str, cache_index, dropout_rate: float, dropout_key) -> None:
  if cache_index is not None or (dropout_key is not None and dropout_rate > 0):
    raise ValueError(f'{impl} attention has no KV cache and no attention dropout: use xla_attention')


def _by_window(window: Window, global_fn, local_fn, *args) -> jax.Array:
  """global_fn(*args) in a global layer, local_fn(*args) in a local one; under lax.cond when is_global is
  traced (both kernels compiled, one run)."""
  if isinstance(window.is_global, bool):
    return (global_fn if window.is_global else local_fn)(*args)
  return jax.lax.cond(window.is_global, global_fn, local_fn, *args)


def _per_shard(kernel, q_btnh: jax.Array, k_bsnh: jax.Array, v_bsnh: jax.Array,
               segment_ids_bt: jax.Array) -> jax.Array:
  """kernel(q, k, v, segment_ids) on each device's shard: batch and heads split as the mesh and the logical axis
  rules split them, the length whole. Replicated kv heads (a tensor axis that does not divide them) are repeated
  to the query heads first, so that each shard's query heads find their kv heads. Outside a mesh: as is."""
  rules = flax.core.spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return kernel(q_btnh, k_bsnh, v_bsnh, segment_ids_bt)
  q_spec = fitted_spec(('batch', None, 'act_heads', None), q_btnh.shape, mesh, rules)
  kv_spec = fitted_spec(('batch', None, 'act_kv_heads', None), k_bsnh.shape, mesh, rules)
  if kv_spec != q_spec:
    groups = q_btnh.shape[2] // k_bsnh.shape[2]
    k_bsnh, v_bsnh = jnp.repeat(k_bsnh, groups, axis=2), jnp.repeat(v_bsnh, groups, axis=2)
  segment_spec = jax.sharding.PartitionSpec(q_spec[0], None)
  return jax.shard_map(kernel, mesh=mesh, in_specs=(q_spec, q_spec, q_spec, segment_spec), out_specs=q_spec,
                       check_vma=False)(q_btnh, k_bsnh, v_bsnh, segment_ids_bt)
