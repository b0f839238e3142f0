"""Transformer building blocks. Every parameter carries logical axis names (see configs/common.py rules)."""
import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.config import ModelConfig
from pretrain.runtime.sharding import constrain


# Parameters are placed by the jitted initialiser's out_shardings (pretrain.runtime.sharding.state_shardings), so a
# model can also be built with no mesh at all; flax's eager sharding of annotated variables is switched off.
_no_eager_sharding = getattr(nnx, 'use_eager_sharding', lambda _: contextlib.nullcontext())


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], names: tuple[str, ...]) -> nnx.Param:
  """A float32 parameter annotated with its logical axis names."""
  with _no_eager_sharding(False):
    return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, jnp.float32))


def split_key(key: jax.Array, num: int) -> jax.Array:
  """jax.random.split for one key, or for per-example keys [batch] (-> [num, batch])."""
  if key.ndim == 0:
    return jax.random.split(key, num)
  return jax.vmap(lambda k: jax.random.split(k, num), out_axes=1)(key)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
  """Inverted dropout; identity when key is None (evaluation) or rate is 0.

  key: one key, or one key per example ([batch], x's leading axis): then an example's mask depends on its own
  key only, not on how the batch is split into microbatches or devices.
  Draws 16 random bits per element (half the cost of a float uniform on CPU); the keep probability is
  threshold / 2**16, and the scale uses that exact probability so the expectation is unchanged.
  """
  if key is None or rate == 0.0:
    return x
  threshold = max(1, round((1.0 - rate) * 2**16))
  if key.ndim == 0:
    bits = jax.random.bits(key, x.shape, jnp.uint16)
  else:
    bits = jax.vmap(lambda k: jax.random.bits(k, x.shape[1:], jnp.uint16))(key)
  keep = bits < jnp.uint16(threshold) if threshold < 2**16 else True
  return jnp.where(keep, x * (2**16 / threshold), 0.0).astype(x.dtype)


class Dense(nnx.Module):
  """y = x @ kernel + bias, contracting the last len(in_shape) axes of x; computes in `dtype`."""

  def __init__(self, in_shape: tuple[int, ...], out_shape: tuple[int, ...], names: tuple[str, ...],
               cfg: ModelConfig, rngs: nnx.Rngs, use_bias: bool = True, init_scale: float = 1.0):
    self.in_dims = len(in_shape)
    self.dtype = cfg.compute_dtype
    init = jax.nn.initializers.normal(cfg.initializer_range * init_scale)
    self.kernel = param(rngs, init, in_shape + out_shape, names)
    self.bias = param(rngs, jax.nn.initializers.zeros, out_shape, names[self.in_dims:]) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    contract = (tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 whatever the compute dtype."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.eps = cfg.layer_norm_eps
    self.dtype = cfg.compute_dtype
    self.scale = param(rngs, jax.nn.initializers.ones, (cfg.hidden_size,), ('norm',))
    self.bias = param(rngs, jax.nn.initializers.zeros, (cfg.hidden_size,), ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]
    return y.astype(self.dtype)


def attention_mask(segment_ids: jax.Array, causal: bool) -> jax.Array:
  """[batch, 1, q, k] bool: a token sees only its own packed segment (and, if causal, not the future).

  segment_ids [batch, length]: 1, 2, ... per packed document, 0 for padding (padding sees only padding).
  """
  mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  if causal:
    length = segment_ids.shape[-1]
    mask = mask & jnp.tril(jnp.ones((length, length), dtype=bool))
  return mask


def residual_init_scale(cfg: ModelConfig) -> float:
  """gpt2 initialises the projections that write into the residual stream with std / sqrt(2 * layers)."""
  return (2 * cfg.num_layers) ** -0.5 if cfg.pre_layer_norm else 1.0


class Attention(nnx.Module):
  """Multi-head self-attention with separate q/k/v projections (heads sharded over 'tensor')."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, h = cfg.hidden_size, cfg.num_heads, cfg.head_dim
    self.query = Dense((d,), (n, h), ('embed', 'heads', 'kv'), cfg, rngs)
    self.key = Dense((d,), (n, h), ('embed', 'heads', 'kv'), cfg, rngs)
    self.value = Dense((d,), (n, h), ('embed', 'heads', 'kv'), cfg, rngs)
    self.out = Dense((n, h), (d,), ('heads', 'kv', 'embed'), cfg, rngs, init_scale=residual_init_scale(cfg))

  def __call__(self, x_btd: jax.Array, mask_b1tt: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
    names = ('batch', 'length', 'act_heads', 'kv')
    q_btnh = constrain(self.query(x_btd), names)
    k_btnh = constrain(self.key(x_btd), names)
    v_btnh = constrain(self.value(x_btd), names)
    rate = self.cfg.attention_dropout_rate
    if dropout_key is not None and rate > 0.0:
      # Dropout on the attention probabilities needs them materialised: the explicit path.
      scores_bnts = jnp.einsum('btnh,bsnh->bnts', q_btnh, k_btnh) / jnp.sqrt(self.cfg.head_dim).astype(q_btnh.dtype)
      scores_bnts = jnp.where(mask_b1tt, scores_bnts.astype(jnp.float32), jnp.finfo(jnp.float32).min)
      probs_bnts = dropout(jax.nn.softmax(scores_bnts, axis=-1), rate, dropout_key).astype(v_btnh.dtype)
      out_btnh = jnp.einsum('bnts,bsnh->btnh', probs_bnts, v_btnh)
    else:
      out_btnh = jax.nn.dot_product_attention(q_btnh, k_btnh, v_btnh, mask=mask_b1tt)
    return self.out(constrain(out_btnh, names))


class Mlp(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.approximate_gelu = cfg.variant == 'gpt2'  # gpt2: tanh GELU ("gelu_new"); bert: exact erf GELU
    self.wi = Dense((cfg.hidden_size,), (cfg.mlp_dim,), ('embed', 'mlp'), cfg, rngs)
    self.wo = Dense((cfg.mlp_dim,), (cfg.hidden_size,), ('mlp', 'embed'), cfg, rngs,
                    init_scale=residual_init_scale(cfg))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    h_btf = jax.nn.gelu(self.wi(x_btd), approximate=self.approximate_gelu)
    return self.wo(constrain(h_btf, ('batch', 'length', 'act_mlp')))


class Block(nnx.Module):
  """One Transformer layer: post-LN (bert) or pre-LN (gpt2) around attention and MLP."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.attention = Attention(cfg, rngs)
    self.attention_norm = LayerNorm(cfg, rngs)
    self.mlp = Mlp(cfg, rngs)
    self.mlp_norm = LayerNorm(cfg, rngs)

  def __call__(self, x_btd: jax.Array, mask_b1tt: jax.Array, dropout_key: jax.Array | None) -> jax.Array:
    keys = split_key(dropout_key, 3) if dropout_key is not None else (None, None, None)
    rate = self.cfg.dropout_rate
    if self.cfg.pre_layer_norm:
      x_btd = x_btd + dropout(self.attention(self.attention_norm(x_btd), mask_b1tt, keys[0]), rate, keys[1])
      x_btd = x_btd + dropout(self.mlp(self.mlp_norm(x_btd)), rate, keys[2])
    else:
      x_btd = self.attention_norm(x_btd + dropout(self.attention(x_btd, mask_b1tt, keys[0]), rate, keys[1]))
      x_btd = self.mlp_norm(x_btd + dropout(self.mlp(x_btd), rate, keys[2]))
    return constrain(x_btd, ('batch', 'length', 'act_embed'))
