"""The pretrained Transformer plus a fresh classification (or regression) head on its pooled output.

pooling 'auto': bert uses the pretrained pooler, tanh(dense([CLS] hidden)), as BertForSequenceClassification;
gpt2 the hidden state of the last real token, as GPT2ForSequenceClassification. 'mean': the mean hidden
state of the real tokens (any variant).
The parameter tree is {'encoder': <the pretraining encoder's tree>, 'head': ...}, so the encoder restores
from a pretraining checkpoint by name.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.layers import Dense, dropout
from pretrain.model.config import ModelConfig
from pretrain.model.transformer import Transformer


POOLINGS = ('auto', 'mean')


class Classifier(nnx.Module):
  def __init__(self, cfg: ModelConfig, num_outputs: int, rngs: nnx.Rngs, pooling: str = 'auto'):
    self.cfg = cfg
    self.pooling = pooling
    self.encoder = Transformer(cfg, rngs)
    self.head = Dense((cfg.hidden_size,), (num_outputs,), ('embed', 'classes'), cfg, rngs)

  def __call__(self, tokens_bt: jax.Array, token_type_ids: jax.Array, segment_ids: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """segment_ids: 1 for real tokens, 0 for padding. Returns float32 [batch, num_outputs]."""
    encoder_key, head_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    hidden_btd = self.encoder(tokens_bt, segment_ids=segment_ids, token_type_ids=token_type_ids,
                              dropout_key=encoder_key)
    if self.pooling == 'mean':
      real_bt1 = (segment_ids > 0)[..., None].astype(hidden_btd.dtype)
      pooled_bd = jnp.sum(hidden_btd * real_bt1, axis=1) / jnp.maximum(jnp.sum(real_bt1, axis=1), 1.0)
    elif self.encoder.pooler is not None:
      pooled_bd = self.encoder.pool(hidden_btd)
    else:
      last_b = jnp.maximum(jnp.sum(segment_ids > 0, axis=1) - 1, 0)
      pooled_bd = jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
    pooled_bd = dropout(pooled_bd, self.cfg.dropout_rate, head_key)
    return self.head(pooled_bd).astype(jnp.float32)
