"""Self-attention. It receives the tokens' packed-segment ids and positions, never a prebuilt mask: the kernel
builds what it needs from them (the XLA reference below a dense mask; a fused kernel would take the segment ids
as they are), so a kernel can replace it without touching the block or the layer scan.

segment_ids [batch, length]: 1, 2, ... per packed document, 0 for padding. A token sees only tokens of its own
segment (padding sees only padding), and with model.causal only itself and earlier ones. In a local layer
(model.local_window) it sees only those within local_window // 2 positions of its own, either side.

Generation (decoders) passes a KV cache (pretrain/model/kv_cache.py): the new tokens' keys and values are written
into it, and they attend over its slots up to their own, which hold one document (no segment ids).

Grouped-query attention (model.num_kv_heads < num_heads): query head i reads key/value head i // kv_groups, as
Hugging Face's repeat_kv lays them out. Key/value heads shard over 'tensor' like the query heads when the tensor
axis divides them; when it does not (8 kv heads on tensor 16) they are replicated (pretrain.runtime.sharding).
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.config import ModelConfig
from pretrain.model.kv_cache import KVCache
from pretrain.model.layers import Dense, dropout, residual_init_scale
from pretrain.model.rotary import apply_rotary
from pretrain.runtime.sharding import constrain


class Window(NamedTuple):
  """A layer's local attention: is_global (a traced bool inside the layer scan) lifts the window."""
  half_width: int
  is_global: jax.Array


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
    out_btnh = xla_attention(q_btnh, k_btnh, v_btnh, segment_ids_bt, causal=self.cfg.causal, cache_index=cache_index,
                             window=window, dropout_rate=self.cfg.attention_dropout_rate, dropout_key=dropout_key)
    out_btd = self.out(constrain(out_btnh, names))
    return out_btd if cache is None else (out_btd, cache)
