"""Self-attention. It receives the tokens' packed-segment ids and positions, never a prebuilt mask: the kernel
(model.attention_impl, pretrain/model/attention_kernels.py) builds what it needs from them (the XLA reference a
dense mask; the fused kernels take the segment ids as they are), so a kernel can replace another without touching
the block or the layer scan.

segment_ids [batch, length]: 1, 2, ... per packed document, 0 for padding. A token sees only tokens of its own
segment (padding sees only padding), and with model.causal only itself and earlier ones. In a local layer
(model.local_window) it sees only those within local_window // 2 positions of its own, either side.

Generation (decoders) passes a KV cache (pretrain/model/kv_cache.py): the new tokens' keys and values are written
into it, and they attend over its slots up to their own, which hold one document (no segment ids): always with
the xla kernel.

Grouped-query attention (model.num_kv_heads < num_heads): query head i reads key/value head i // kv_groups, as
Hugging Face's repeat_kv lays them out. Key/value heads shard over 'tensor' like the query heads when the tensor
axis divides them; when it does not (8 kv heads on tensor 16) they are replicated (pretrain.runtime.sharding).
"""
import jax
from flax import nnx

from pretrain.model import attention_kernels
from pretrain.model.attention_kernels import Window
from pretrain.model.config import ModelConfig
from pretrain.model.kv_cache import KVCache
from pretrain.model.layers import Dense, residual_init_scale
from pretrain.model.rotary import apply_rotary
from pretrain.runtime.sharding import constrain


class Attention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (heads sharded over 'tensor'), rotary positions
  on q and k with model.positions 'rotary'."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, kv, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.query = Dense((d,), (n, h), ('embed', 'heads', 'kv'), cfg, rngs)
    self.key = Dense((d,), (kv, h), ('embed', 'kv_heads', 'kv'), cfg, rngs)
    self.value = Dense((d,), (kv, h), ('embed', 'kv_heads', 'kv'), cfg, rngs)
    self.out = Dense((n, h), (d,), ('heads', 'kv', 'embed'), cfg, rngs, init_scale=residual_init_scale(cfg))

  def __call__(self, x_btd: jax.Array, segment_ids_bt: jax.Array, positions_bt: jax.Array,
               dropout_key: jax.Array | None, cache: KVCache | None = None,
               is_global: jax.Array | bool = True) -> jax.Array | tuple[jax.Array, KVCache]:
    """positions_bt: each token's position within its document (rotary positions read them; learned ones were
    added to the embeddings). With a cache (one layer's): the tokens' keys and values are written into it at
    cache.index and they attend over the cache; returns (output, the written cache). is_global: false in a
    local layer (model.local_window)."""
    names, kv_names = ('batch', 'length', 'act_heads', 'kv'), ('batch', 'length', 'act_kv_heads', 'kv')
    q_btnh = constrain(self.query(x_btd), names)
    k_btnh = constrain(self.key(x_btd), kv_names)
    v_btnh = constrain(self.value(x_btd), kv_names)
    if self.cfg.positions == 'rotary':
      theta = self.cfg.layer_rope_theta(is_global)
      q_btnh = apply_rotary(q_btnh, positions_bt, theta)
      k_btnh = apply_rotary(k_btnh, positions_bt, theta)
    window = Window(self.cfg.local_window // 2, is_global) if self.cfg.has_local_layers else None
    cache_index = None
    if cache is not None:
      cache = cache.write(k_btnh, v_btnh)
      k_btnh, v_btnh, cache_index = cache.k, cache.v, cache.index
    impl = 'xla' if cache is not None else attention_kernels.resolve_attention_impl(
        self.cfg, attention_kernels.kernel_backend())
    out_btnh = attention_kernels.attention_kernel(impl)(
        q_btnh, k_btnh, v_btnh, segment_ids_bt, causal=self.cfg.causal, cache_index=cache_index, window=window,
        dropout_rate=self.cfg.attention_dropout_rate, dropout_key=dropout_key)
    out_btd = self.out(constrain(out_btnh, names))
    return out_btd if cache is None else (out_btd, cache)
