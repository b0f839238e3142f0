"""The models built on the Transformer: the pretraining LanguageModel and the fine-tuning Classifier.

LanguageModel: hidden states -> logits over the vocabulary. With model.head_transform the hidden state first
passes dense + activation + norm (bert's MLM head); the output layer is the token embedding itself
(model.tie_embeddings) or its own matrix (`lm_head`); model.head_bias adds a bias. bert: BertForMaskedLM's head;
gpt2: GPT2LMHeadModel's (tied, no bias). With model.sentence_head (mlm.sentence_task nsp or sop) a 2-way head on
the pooled first token (BertForPreTraining's cls.seq_relationship). `decode` runs a causal model with a KV cache
(pretrain/model/kv_cache.py) for generation (tools.generate).

Classifier: a fresh classification (or regression) head. outputs 'sequence': on a pooled hidden state (below);
'tokens' (token classification, NER) and 'spans' (extractive QA: 2 outputs, start and end logits) apply it to
every position, with no pooling (BertForTokenClassification, BertForQuestionAnswering, ...; the bert pooler's
parameters stay in the encoder, unused). Sequence heads: pooling 'auto': the pooler
when the model has one (BertForSequenceClassification), else the last real token for a causal model
(GPT2ForSequenceClassification, LlamaForSequenceClassification), else the mean of the real tokens; 'mean': the
mean of the real tokens' hidden states; 'cls': the first token's. An encoder whose MLM head has a transform but
no pooler (modernbert) passes the pooled vector through a copy of that transform (dense + GELU + norm) first, as
ModernBertForSequenceClassification does (per token for 'tokens' and 'spans', as ModernBertForTokenClassification
and ModernBertForQuestionAnswering), restored from the MLM head's. Its parameter tree is
{'encoder': <the pretraining encoder's tree>, ['pooled_transform': <mlm_head's transform and norm>,] 'head': ...},
so the encoder restores from a pretraining checkpoint by name.
"""
import jax
import jax.numpy as jnp
from flax import nnx

from pretrain.model.config import ModelConfig
from pretrain.model.kv_cache import KVCache
from pretrain.model.layers import ACTIVATIONS, Dense, dropout, norm, param
from pretrain.model.transformer import Transformer
from pretrain.runtime.errors import require
from pretrain.runtime.sharding import constrain

POOLINGS = ('auto', 'mean', 'cls')
OUTPUTS = ('sequence', 'tokens', 'spans')  # Classifier outputs: one vector per sequence, per token, start/end


class MlmHead(nnx.Module):
  """What bert puts between the last block and the output layer (transform), and the logits' bias."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs, logits_bias: bool | None = None):
    """logits_bias: default cfg.head_bias (the Classifier's copy of the transform has none)."""
    self.activation = ACTIVATIONS[cfg.mlp]
    self.transform = (Dense((cfg.hidden_size,), (cfg.hidden_size,), ('embed', 'embed_out'), cfg, rngs)
                      if cfg.head_transform else None)
    self.norm = norm(cfg, rngs) if cfg.head_transform else None
    logits_bias = cfg.head_bias if logits_bias is None else logits_bias
    self.bias = param(rngs, jax.nn.initializers.zeros, (cfg.vocab_size,), ('vocab',)) if logits_bias else None

  def before_output(self, hidden_btd: jax.Array) -> jax.Array:
    if self.transform is None:
      return hidden_btd
    return self.norm(self.activation(self.transform(hidden_btd)))

  def after_output(self, logits_btv: jax.Array) -> jax.Array:
    return logits_btv if self.bias is None else logits_btv + self.bias[...].astype(logits_btv.dtype)


class LanguageModel(nnx.Module):
  """Transformer + its pretraining head: tokens -> logits [batch, length, vocab]."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.encoder = Transformer(cfg, rngs)
    self.mlm_head = MlmHead(cfg, rngs) if cfg.head_transform or cfg.head_bias else None
    self.lm_head = (None if cfg.tie_embeddings else
                    Dense((cfg.hidden_size,), (cfg.vocab_size,), ('embed', 'vocab'), cfg, rngs, use_bias=False))
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
    hidden_btd, sentence_logits_bc = self.pretraining_hidden(tokens_bt, predict_positions=predict_positions,
                                                             **kwargs)
    return self.logits(hidden_btd).astype(jnp.float32), sentence_logits_bc

  def pretraining_hidden(self, tokens_bt: jax.Array, *, predict_positions: jax.Array | None = None,
                         **kwargs) -> tuple[jax.Array, jax.Array | None]:
    """(the hidden states `logits` reads: [batch, length or K, hidden], sentence logits as pretraining_logits):
    the loss applies the output layer itself, a chunk of tokens at a time (objectives.chunked_cross_entropy)."""
    hidden_btd = self.encoder(tokens_bt, **kwargs)
    sentence_logits_bc = None
    if self.sentence_head is not None:
      sentence_logits_bc = self.sentence_head(self.encoder.pool(hidden_btd)).astype(jnp.float32)
    return _at_positions(hidden_btd, predict_positions), sentence_logits_bc

  def decode(self, tokens_bt: jax.Array, cache: KVCache, *,
             predict_positions: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Generation with a KV cache: (logits as __call__ gives them, the cache with tokens_bt written at
    cache.index..). A prompt (prefill) or one new token per step; causal models only."""
    hidden_btd, cache = self.encoder(tokens_bt, cache=cache)
    return self.logits(_at_positions(hidden_btd, predict_positions)).astype(jnp.float32), cache

  def logits(self, hidden_btd: jax.Array) -> jax.Array:
    """The output layer (with the MLM head's transform and bias) on hidden states [batch, length, hidden] ->
    [batch, length, vocab] (compute dtype)."""
    if self.mlm_head is not None:
      hidden_btd = self.mlm_head.before_output(hidden_btd)
    if self.lm_head is None:
      logits_btv = self.encoder.attend(hidden_btd)
    else:
      logits_btv = constrain(self.lm_head(hidden_btd), ('batch', 'length', 'act_vocab'))
    return logits_btv if self.mlm_head is None else self.mlm_head.after_output(logits_btv)


def _at_positions(hidden_btd: jax.Array, positions_bk: jax.Array | None) -> jax.Array:
  """hidden_btd at positions [batch, K] -> [batch, K, hidden]; all of it for None."""
  if positions_bk is None:
    return hidden_btd
  return jnp.take_along_axis(hidden_btd, positions_bk[..., None], axis=1)


def resolve_pooling(cfg: ModelConfig, pooling: str) -> str:
  """'auto' -> 'pooler' (the model has one), 'last' (causal: the last real token) or 'mean'; else pooling
  ('mean', 'cls')."""
  if pooling != 'auto':
    return pooling
  return 'pooler' if cfg.pooler else 'last' if cfg.causal else 'mean'


def has_pooled_transform(cfg: ModelConfig) -> bool:
  """Whether the Classifier passes its pooled vector through a copy of the MLM head's transform (modernbert)."""
  return cfg.head_transform and not cfg.pooler and not cfg.causal


class Classifier(nnx.Module):
  """The pretrained Transformer plus a fresh head -> float32 [batch, num_outputs] on its pooled output (outputs
  'sequence'), or [batch, length, num_outputs] on every position ('tokens'; 'spans': num_outputs 2, start and
  end logits)."""

  def __init__(self, cfg: ModelConfig, num_outputs: int, rngs: nnx.Rngs, pooling: str = 'auto',
               outputs: str = 'sequence'):
    require(outputs in OUTPUTS, f"outputs: {outputs!r} is not one of {', '.join(OUTPUTS)}")
    require(outputs != 'spans' or num_outputs == 2,
            f"num_outputs: a 'spans' head has 2 outputs (start and end logits), not {num_outputs}")
    self.cfg = cfg
    self.outputs = outputs
    self.pooling = resolve_pooling(cfg, pooling)
    self.encoder = Transformer(cfg, rngs)
    self.pooled_transform = (MlmHead(cfg, rngs, logits_bias=False) if has_pooled_transform(cfg) else None)
    # A bias unless the model has none (llama: LlamaForSequenceClassification's score layer has no bias), as
    # ModernBertForSequenceClassification's classifier has one; every HF per-token head has one.
    use_bias = cfg.use_bias or self.pooled_transform is not None or outputs != 'sequence'
    self.head = Dense((cfg.hidden_size,), (num_outputs,), ('embed', 'classes'), cfg, rngs, use_bias=use_bias)

  def __call__(self, tokens_bt: jax.Array, token_type_ids: jax.Array, segment_ids: jax.Array,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """segment_ids: 1 for real tokens, 0 for padding. Per-token outputs at padding are meaningless."""
    encoder_key, head_key = jax.random.split(dropout_key) if dropout_key is not None else (None, None)
    hidden_btd = self.encoder(tokens_bt, segment_ids=segment_ids, token_type_ids=token_type_ids,
                              dropout_key=encoder_key)
    # [batch, hidden] or, per token, [batch, length, hidden]
    features = hidden_btd if self.outputs != 'sequence' else self.pool(hidden_btd, segment_ids)
    if self.pooled_transform is not None:
      features = self.pooled_transform.before_output(features)
    features = dropout(features, self.cfg.dropout_rate, head_key)
    return self.head(features).astype(jnp.float32)

  def pool(self, hidden_btd: jax.Array, segment_ids_bt: jax.Array) -> jax.Array:
    """[batch, hidden]: the sentence vector the head reads (see resolve_pooling)."""
    if self.pooling == 'pooler':
      return self.encoder.pool(hidden_btd)
    if self.pooling == 'cls':
      return hidden_btd[:, 0]
    if self.pooling == 'last':
      last_b = jnp.maximum(jnp.sum(segment_ids_bt > 0, axis=1) - 1, 0)
      return jnp.take_along_axis(hidden_btd, last_b[:, None, None], axis=1)[:, 0]
    real_bt1 = (segment_ids_bt > 0)[..., None].astype(hidden_btd.dtype)
    return jnp.sum(hidden_btd * real_bt1, axis=1) / jnp.maximum(jnp.sum(real_bt1, axis=1), 1.0)
