"""The key/value cache of a decoder, for generation (tools.generate): each layer's keys and values of the tokens
seen so far, so a new token runs the model over itself only and attends over the cache.

One document per batch row, from slot 0: a token in slot s has position s (rotary or learned), as in training
where every document starts at position 0. `index` is the slot where the next tokens are written; the attention of
a token in slot s reads slots 0..s (pretrain/model/attention.py), so slots past it may hold anything (zeros, or a
padded prompt's keys) until they are written.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp

from pretrain.model.config import ModelConfig


class KVCache(NamedTuple):
  """k, v: [layers, batch, slots, kv_heads, head_dim] in the compute dtype (the Transformer's); one layer's
  [batch, slots, kv_heads, head_dim] inside the layer scan. index: int32 scalar, the first slot to write."""
  k: jax.Array
  v: jax.Array
  index: jax.Array

  @classmethod
  def zeros(cls, cfg: ModelConfig, batch: int, slots: int) -> 'KVCache':
    shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
    return cls(jnp.zeros(shape, cfg.compute_dtype), jnp.zeros(shape, cfg.compute_dtype), jnp.int32(0))

  def write(self, k_btnh: jax.Array, v_btnh: jax.Array) -> 'KVCache':
    """One layer's cache with the new tokens' keys and values in slots index.. (index unchanged).

    The caller keeps index + length <= slots (dynamic_update_slice would clamp the start, not fail).
    """
    start = (0, self.index, 0, 0)
    k = jax.lax.dynamic_update_slice(self.k, k_btnh.astype(self.k.dtype), start)
    v = jax.lax.dynamic_update_slice(self.v, v_btnh.astype(self.v.dtype), start)
    return KVCache(k, v, self.index)
