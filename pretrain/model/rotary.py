"""Rotary position embeddings in Hugging Face's rotate-half layout (LlamaRotaryEmbedding, apply_rotary_pos_emb).

A head vector's first half pairs with its second half: (x1, x2) at position p rotates by p * inv_freq, where
inv_freq[i] = theta ** (-2i / head_dim). (The interleaved layout of the original paper and of Meta's checkpoints
pairs neighbours (x0, x1) instead; Hugging Face permutes q and k weights when converting those.) Positions are
each token's position within its packed document, so every document starts at 0.
"""
import jax
import jax.numpy as jnp


def inverse_frequencies(head_dim: int, theta: float) -> jax.Array:
  """[head_dim / 2] float32, as LlamaRotaryEmbedding computes them."""
  return 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))


def rotate_half(x: jax.Array) -> jax.Array:
  x1, x2 = jnp.split(x, 2, axis=-1)
  return jnp.concatenate([-x2, x1], axis=-1)


def apply_rotary(x_btnh: jax.Array, positions_bt: jax.Array, theta: float) -> jax.Array:
  """x rotated by its tokens' positions; computed in float32, returned in x's dtype."""
  freqs_bth = positions_bt.astype(jnp.float32)[..., None] * inverse_frequencies(x_btnh.shape[-1], theta)
  angles_bt1h = jnp.concatenate([freqs_bth, freqs_bth], axis=-1)[:, :, None, :]
  x32 = x_btnh.astype(jnp.float32)
  return (x32 * jnp.cos(angles_bt1h) + rotate_half(x32) * jnp.sin(angles_bt1h)).astype(x_btnh.dtype)
