"""The Transformer: embeddings, scanned blocks (one compiled layer for any depth), final norm, pooler.

Which parts exist, and how a block orders its norms, are ModelConfig fields (pretrain/model/config.py); with
model.causal it is a decoder, else a bidirectional encoder.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.attention import Attention
from pretrain.model.layers import Dense, Mlp, dropout, norm, param, split_key
from pretrain.model.config import ModelConfig
from pretrain.model.kv_cache import KVCache
from pretrain.runtime.sharding import constrain

LAYERS_AXIS = 'layers'


class Block(nnx.Module):
  """One layer: attention and MLP, each with its norm before (pre: x + f(norm(x))) or after (post: norm(x + f(x)))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = Attention(cfg, rngs)
    self.attention_norm = norm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)
    self.mlp_norm = norm(cfg, rngs)

  def __call__(self, x_btd: jax.Array, segment_ids_bt: jax.Array, positions_bt: jax.Array,
               dropout_key: jax.Array | None, cache: KVCache | None = None,
               layer: jax.Array | int = 0) -> jax.Array | tuple[jax.Array, KVCache]:
    """-> x, or (x, the layer's written cache) with a cache (see Attention). layer: this block's index (traced
    inside the layer scan), for the layers that differ: local or global attention, layer 0's attention norm."""
    cfg = self.cfg
    keys = split_key(dropout_key, 3) if dropout_key is not None else (None, None, None)
    rate = cfg.dropout_rate
    pre = cfg.norm_position == 'pre'
    attention_in_btd = x_btd
    if pre:
      attention_in_btd = self.attention_norm(x_btd)
      if not cfg.first_attention_norm:  # layer 0 reads the (normed) embeddings as they are
        attention_in_btd = jnp.where(layer == 0, x_btd.astype(attention_in_btd.dtype), attention_in_btd)
    is_global = layer % cfg.global_every == 0 if cfg.has_local_layers else True
    attended_btd = self.attention(attention_in_btd, segment_ids_bt, positions_bt, keys[0], cache, is_global)
    if cache is not None:
      attended_btd, cache = attended_btd
    if pre:
      x_btd = x_btd + dropout(attended_btd, rate, keys[1])
      x_btd = x_btd + dropout(self.mlp(self.mlp_norm(x_btd)), rate, keys[2])
    else:
      x_btd = self.attention_norm(x_btd + dropout(attended_btd, rate, keys[1]))
      x_btd = self.mlp_norm(x_btd + dropout(self.mlp(x_btd), rate, keys[2]))
    x_btd = constrain(x_btd, ('batch', 'length', 'act_embed'))
    return x_btd if cache is None else (x_btd, cache)


class Transformer(nnx.Module):
  """tokens [batch, length] -> hidden states [batch, length, hidden]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    init = jax.nn.initializers.normal(cfg.initializer_range)
    self.token_embed = param(rngs, init, (cfg.vocab_size, cfg.hidden_size), ('vocab', 'embed'))
    self.position_embed = (param(rngs, init, (cfg.max_position_embeddings, cfg.hidden_size), ('position', 'embed'))
                           if cfg.positions == 'learned' else None)
    self.type_embed = (param(rngs, init, (cfg.type_vocab_size, cfg.hidden_size), ('type_vocab', 'embed'))
                       if cfg.type_vocab_size else None)
    self.embed_norm = norm(cfg, rngs) if cfg.embedding_norm else None
    self.final_norm = norm(cfg, rngs) if cfg.final_norm else None
    self.pooler = (Dense((cfg.hidden_size,), (cfg.hidden_size,), ('embed', 'embed_out'), cfg, rngs)
                   if cfg.pooler else None)

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    def stacked_blocks(rngs: nnx.Rngs) -> Block:
      return Block(cfg, rngs)

    self.blocks = stacked_blocks(rngs)

  def embed(self, tokens_bt, positions_bt, token_types_bt) -> jax.Array:
    # The table is gathered whole before the lookup (as fsdp does for every weight): a lookup into a table
    # sharded over vocab and embed has no efficient partitioning.
    table_vd = constrain(self.token_embed[...], (None, None))
    x_btd = jnp.take(table_vd, tokens_bt, axis=0)
    if self.position_embed is not None:
      x_btd = x_btd + jnp.take(self.position_embed[...], positions_bt, axis=0)
    if self.type_embed is not None:
      x_btd = x_btd + jnp.take(self.type_embed[...], token_types_bt, axis=0)
    return x_btd

  def __call__(self, tokens_bt: jax.Array, *, segment_ids: jax.Array | None = None,
               positions: jax.Array | None = None, token_type_ids: jax.Array | None = None,
               dropout_key: jax.Array | None = None,
               cache: KVCache | None = None) -> jax.Array | tuple[jax.Array, KVCache]:
    """segment_ids: 1, 2, ... per packed document, 0 = padding (default: one segment, no padding).
    positions: per-token positions (default 0..length-1). dropout_key: one key, or one per example
    [batch]; None means deterministic.

    cache (causal models, generation): the tokens go into slots cache.index.. of one document per row, at
    positions cache.index.. (no segment ids, no dropout); returns (hidden states, the cache with index advanced)."""
    cfg = self.cfg
    batch, length = tokens_bt.shape
    if cache is not None and (segment_ids is not None or dropout_key is not None or not cfg.causal
                              or cfg.has_local_layers):
      raise ValueError('a KV cache holds one document of a causal model without local layers: no segment_ids, '
                       'no dropout')
    if segment_ids is None and cache is None:
      segment_ids = jnp.ones((batch, length), jnp.int32)
    if positions is None:
      positions_t = jnp.arange(length, dtype=jnp.int32)
      positions_t = positions_t if cache is None else cache.index + positions_t
      positions = jnp.broadcast_to(positions_t, (batch, length))
    if token_type_ids is None:
      token_type_ids = jnp.zeros((batch, length), jnp.int32)
    embed_key, layers_key = split_key(dropout_key, 2) if dropout_key is not None else (None, None)

    x_btd = self.embed(tokens_bt, positions, token_type_ids)
    if self.embed_norm is not None:
      x_btd = self.embed_norm(x_btd)
    x_btd = dropout(x_btd.astype(cfg.compute_dtype), cfg.dropout_rate, embed_key)
    x_btd = constrain(x_btd, ('batch', 'length', 'act_embed'))
    layer_keys = split_key(layers_key, cfg.num_layers) if layers_key is not None else None

    def apply_block(x, block, key, kv, layer):
      # kv: None, or this layer's (k, v) slices of the stacked cache
      return block(x, segment_ids, positions, key, None if kv is None else KVCache(*kv, cache.index), layer)

    policy = cfg.checkpoint_policy()
    if policy is not None:
      apply_block = nnx.remat(apply_block, policy=policy, prevent_cse=False)
    stacked_kv, kv_axis = (None, None) if cache is None else ((cache.k, cache.v), 0)
    scan = nnx.scan(apply_block, in_axes=(nnx.Carry, 0, 0 if layer_keys is not None else None, kv_axis, 0),
                    out_axes=nnx.Carry if cache is None else (nnx.Carry, 0),
                    transform_metadata={nnx.PARTITION_NAME: LAYERS_AXIS})
    x_btd = scan(x_btd, self.blocks, layer_keys, stacked_kv, jnp.arange(cfg.num_layers, dtype=jnp.int32))
    if cache is not None:
      x_btd, written = x_btd
      cache = KVCache(written.k, written.v, cache.index + length)

    if self.final_norm is not None:
      x_btd = self.final_norm(x_btd)
    return x_btd if cache is None else (x_btd, cache)

  def pool(self, hidden_btd: jax.Array) -> jax.Array:
    """The pooler (model.pooler): tanh(dense(hidden of the first ([CLS]) token)) -> [batch, hidden]."""
    return jnp.tanh(self.pooler(hidden_btd[:, 0]))

  def attend(self, hidden_btd: jax.Array) -> jax.Array:
    """Tied output projection: hidden @ token_embed.T -> logits [batch, length, vocab]."""
    embed_vd = self.token_embed[...].astype(self.cfg.compute_dtype)
    logits_btv = jnp.einsum('btd,vd->btv', hidden_btd.astype(self.cfg.compute_dtype), embed_vd)
    return constrain(logits_btv, ('batch', 'length', 'act_vocab'))
