"""Pretraining heads on top of the Transformer, both tied to the input embedding.

bert: MLM head = dense + erf GELU + LayerNorm, then the tied decoder plus an output bias (BertForMaskedLM).
gpt2: LM head = the tied decoder, no bias (GPT2LMHeadModel).
With cfg.sentence_head (mlm.sentence_task nsp or sop), bert also has a 2-way sentence head on the pooled [CLS]
(BertForPreTraining's cls.seq_relationship).
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.layers import Dense, LayerNorm, param
from pretrain.model.config import ModelConfig
from pretrain.model.transformer import Transformer


class MlmHead(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.transform = Dense((cfg.hidden_size,), (cfg.hidden_size,), ('embed', 'embed_out'), cfg, rngs)
    self.norm = LayerNorm(cfg, rngs)
    self.bias = param(rngs, jax.nn.initializers.zeros, (cfg.vocab_size,), ('vocab',))

  def __call__(self, hidden_btd: jax.Array, encoder: Transformer) -> jax.Array:
    h_btd = self.norm(jax.nn.gelu(self.transform(hidden_btd), approximate=False))
    return encoder.attend(h_btd) + self.bias[...].astype(h_btd.dtype)


class LanguageModel(nnx.Module):
  """Transformer + its pretraining head: tokens -> logits [batch, length, vocab]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Transformer(cfg, rngs)
    self.mlm_head = MlmHead(cfg, rngs) if cfg.variant == 'bert' else None
    # Built last, so the other parameters initialise as without it.
    self.sentence_head = (Dense((cfg.hidden_size,), (2,), ('embed', 'classes'), cfg, rngs)
                          if cfg.sentence_head else None)

  def __call__(self, tokens_bt: jax.Array, *, predict_positions: jax.Array | None = None, **kwargs) -> jax.Array:
    """Logits in float32: [batch, length, vocab], or [batch, K, vocab] at predict_positions [batch, K] only.

    kwargs: segment_ids, positions, token_type_ids, dropout_key (see Transformer).
    """
    return self.pretraining_logits(tokens_bt, predict_positions=predict_positions, **kwargs)[0]

  def pretraining_logits(self, tokens_bt: jax.Array, *, predict_positions: jax.Array | None = None,
                         **kwargs) -> tuple[jax.Array, jax.Array | None]:
    """(token logits as __call__ gives them, sentence logits [batch, 2] in float32 or None without the head)."""
    hidden_btd = self.encoder(tokens_bt, **kwargs)
    sentence_logits_bc = None
    if self.sentence_head is not None:
      sentence_logits_bc = self.sentence_head(self.encoder.pool(hidden_btd)).astype(jnp.float32)
    if predict_positions is not None:
      hidden_btd = jnp.take_along_axis(hidden_btd, predict_positions[..., None], axis=1)
    if self.mlm_head is not None:
      logits_btv = self.mlm_head(hidden_btd, self.encoder)
    else:
      logits_btv = self.encoder.attend(hidden_btd)
    return logits_btv.astype(jnp.float32), sentence_logits_bc
