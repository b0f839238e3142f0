"""Building blocks: parameters with logical axis names (configs/common.py maps them onto the mesh), dropout,
dense layers, norms and the MLP. The norm and the MLP are chosen by name (model.norm, model.mlp) from tables here."""
import contextlib

import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.config import GATED_MLPS, ModelConfig
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
               cfg: ModelConfig, rngs: nnx.Rngs, use_bias: bool | None = None, init_scale: float = 1.0):
    """use_bias: default cfg.use_bias."""
    self.in_dims = len(in_shape)
    self.dtype = cfg.compute_dtype
    init = jax.nn.initializers.normal(cfg.initializer_range * init_scale)
    self.kernel = param(rngs, init, in_shape + out_shape, names)
    use_bias = cfg.use_bias if use_bias is None else use_bias
    self.bias = param(rngs, jax.nn.initializers.zeros, out_shape, names[self.in_dims:]) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...].astype(self.dtype)
    contract = (tuple(range(x.ndim - self.in_dims, x.ndim)), tuple(range(self.in_dims)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel, (contract, ((), ())))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class LayerNorm(nnx.Module):
  """LayerNorm computed in float32 whatever the compute dtype; a bias when cfg.use_bias."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.eps = cfg.layer_norm_eps
    self.dtype = cfg.compute_dtype
    self.scale = param(rngs, jax.nn.initializers.ones, (cfg.hidden_size,), ('norm',))
    self.bias = param(rngs, jax.nn.initializers.zeros, (cfg.hidden_size,), ('norm',)) if cfg.use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = x32.mean(-1, keepdims=True)
    var = jnp.square(x32 - mean).mean(-1, keepdims=True)
    y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...]
    if self.bias is not None:
      y = y + self.bias[...]
    return y.astype(self.dtype)


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x^2) + eps) * scale, statistics in float32 (LlamaRMSNorm); no bias."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.eps = cfg.layer_norm_eps
    self.dtype = cfg.compute_dtype
    self.scale = param(rngs, jax.nn.initializers.ones, (cfg.hidden_size,), ('norm',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(self.dtype)


NORMS = {'layernorm': LayerNorm, 'rmsnorm': RMSNorm}  # model.norm -> the module


def norm(cfg: ModelConfig, rngs: nnx.Rngs) -> nnx.Module:
  """The norm model.norm names, over the hidden size."""
  return NORMS[cfg.norm](cfg, rngs)


# model.mlp -> the activation between its two dense layers (also the MLM head transform's activation).
ACTIVATIONS = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=False),  # exact, erf (bert's "gelu")
    'gelu_tanh': lambda x: jax.nn.gelu(x, approximate=True),  # the tanh approximation (gpt2's "gelu_new")
    'swiglu': jax.nn.silu,  # the gate's activation (llama's "silu")
    'geglu': lambda x: jax.nn.gelu(x, approximate=False),  # the gate's activation, exact (modernbert's "gelu")
}


def residual_init_scale(cfg: ModelConfig) -> float:
  """With cfg.scale_residual_init (gpt2), the layers that write into the residual stream start with
  std / sqrt(2 * layers)."""
  return (2 * cfg.num_layers) ** -0.5 if cfg.scale_residual_init else 1.0


class Mlp(nnx.Module):
  """dense wi (hidden -> mlp_dim) -> activation -> dense wo (mlp_dim -> hidden); a gated MLP (model.mlp swiglu, geglu)
  has two input layers instead, wo(activation(wi_gate(x)) * wi_up(x))."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.activation = ACTIVATIONS[cfg.mlp]
    d, f = cfg.hidden_size, cfg.mlp_dim
    gated = cfg.mlp in GATED_MLPS
    self.wi = None if gated else Dense((d,), (f,), ('embed', 'mlp'), cfg, rngs)
    self.wi_gate = Dense((d,), (f,), ('embed', 'mlp'), cfg, rngs) if gated else None
    self.wi_up = Dense((d,), (f,), ('embed', 'mlp'), cfg, rngs) if gated else None
    self.wo = Dense((f,), (d,), ('mlp', 'embed'), cfg, rngs, init_scale=residual_init_scale(cfg))

  def __call__(self, x_btd: jax.Array) -> jax.Array:
    if self.wi is not None:
      h_btf = self.activation(self.wi(x_btd))
    else:
      h_btf = self.activation(self.wi_gate(x_btd)) * self.wi_up(x_btd)
    return self.wo(constrain(h_btf, ('batch', 'length', 'act_mlp')))


