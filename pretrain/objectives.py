"""Pretraining objectives behind one interface, so the train step, the loop, the FLOP count and the tools never ask
which objective they run.

An Objective says
  batch_shapes             what a batch holds (int32 arrays; the data pipeline delivers exactly these)
  examples                 the model's inputs and the targets, drawn per example from (seed, step, example index)
  loss_sums / normalizers  each loss term as sums over the batch, and what the whole batch divides each by (known
                           before any microbatch runs, so gradient accumulation and hosts combine exactly)
  train_metrics / eval_metrics   the names and values of what is logged
  predicted_per_sequence   how many tokens of a sequence reach the output layer (for the FLOP count)

The token loss runs the output layer and the cross-entropy over chunks of loss_chunk_tokens tokens per device
(train.loss_chunk_tokens; chunked_cross_entropy), so the float32 [tokens, vocab] logits exist for one chunk at a
time in the forward and the backward pass.

  mlm  MaskedLM: BERT masking (pretrain/masking.py); with mlm.sentence_task nsp or sop, sentence pairs and a
       second loss term from the sentence head (the batch then adds `token_types` and `sentence_labels`)
  clm  CausalLM: every position predicts the next token of its own document
"""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from pretrain import masking
from pretrain.data.sentence_pairs import TASKS as SENTENCE_TASKS
from pretrain.runtime.errors import require
from pretrain.runtime.sharding import constrain, logical_axis_size

OBJECTIVES = ('mlm', 'clm')
# The ids our SentencePiece models reserve (pad, unk, cls, sep, [MASK]): what planning and benchmarks mask with,
# when no tokenizer exists yet. They change no shape.
RESERVED_SPECIAL_IDS = (0, 1, 2, 3, 4)
PLANNING_MASK_ID = 4


@dataclasses.dataclass(frozen=True)
class MlmSettings:
  """config.mlm: BERT's masking rates, whole-word masking and the sentence task (objective 'mlm' only)."""
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  whole_word_masking: bool = False
  sentence_task: str = dataclasses.field(default='none', metadata={'fixed_by_checkpoint': True})

  @classmethod
  def from_config(cls, mlm_cfg, objective: str) -> 'MlmSettings':
    settings = cls(**dict(mlm_cfg.items()))
    require(settings.sentence_task in SENTENCE_TASKS,
            f'mlm.sentence_task: {settings.sentence_task!r} is not one of {SENTENCE_TASKS}')
    for field, used in (('sentence_task', settings.sentence_task != 'none'),
                        ('whole_word_masking', settings.whole_word_masking)):
      require(not used or objective == 'mlm', f"mlm.{field}: needs objective 'mlm', got {objective!r}")
    if objective == 'mlm':
      require(0 < settings.mask_prob < 1, f'mlm.mask_prob: must be in (0, 1), got {settings.mask_prob}')
      require(settings.mask_token_prob >= 0 and settings.random_token_prob >= 0
              and settings.mask_token_prob + settings.random_token_prob <= 1,
              'mlm.mask_token_prob + mlm.random_token_prob: must be non-negative and sum to at most 1')
    return settings


def _mean(sums: dict, prefix: str = '', on_host: bool = False) -> dict:
  """{loss, accuracy} of one term's sums (prefix '' for the token term, 'sentence_' for the sentence head): jax
  arrays inside a step, Python floats of summed host values (evaluation)."""
  if on_host:  # no eval rows at all: zeros
    loss_sum, correct_sum, weight = (float(sums.get(f'{prefix}{k}_sum', 0.0)) for k in ('loss', 'correct', 'weight'))
    weight = max(weight, 1.0)
  else:
    loss_sum, correct_sum = sums[f'{prefix}loss_sum'], sums[f'{prefix}correct_sum']
    weight = jnp.maximum(sums[f'{prefix}weight_sum'], 1.0)
  return {f'{prefix}loss': loss_sum / weight, f'{prefix}accuracy': correct_sum / weight}


@dataclasses.dataclass(frozen=True)
class _TokenPrediction:
  """Shared by the objectives that predict tokens with LanguageModel's output layer (`logits`)."""
  loss_chunk_tokens: int = dataclasses.field(default=0, kw_only=True)  # chunked_cross_entropy's; 0: all at once

  def batch_shapes(self, rows: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    return dict.fromkeys(('tokens', 'segment_ids', 'positions'), (rows, seq_len))

  def model_inputs(self, batch: dict) -> dict:
    """What of the batch the model reads besides the (masked) tokens."""
    return {'segment_ids': batch['segment_ids'], 'positions': batch['positions']}

  def loss_sums(self, model, batch: dict, ex: dict, dropout_key: jax.Array | None) -> dict:
    """Each term's loss_sum, correct_sum and weight_sum over the batch (the token term unprefixed)."""
    hidden_btd, sentence_logits_bc = model.pretraining_hidden(
        ex['inputs'], predict_positions=ex['positions'], dropout_key=dropout_key, **self.model_inputs(batch))
    sums = chunked_cross_entropy(model.logits, hidden_btd, ex['targets'], ex['weights'], self.loss_chunk_tokens)
    return self._more_sums(sums, sentence_logits_bc, ex)

  def _more_sums(self, sums: dict, sentence_logits_bc, ex: dict) -> dict:
    del sentence_logits_bc, ex
    return sums

  def normalizers(self, ex: dict) -> dict:
    """Each summed loss term -> what the whole batch divides it by (its number of predicted tokens)."""
    return {'loss_sum': jnp.maximum(jnp.sum(ex['weights']), 1.0)}


@dataclasses.dataclass(frozen=True)
class MaskedLM(_TokenPrediction):
  masking: masking.Masking
  sentence_task: str = 'none'  # nsp | sop: sentence-pair batches and the sentence head's loss term
  name = 'mlm'

  def batch_shapes(self, rows: int, seq_len: int) -> dict[str, tuple[int, ...]]:
    shapes = super().batch_shapes(rows, seq_len)
    if self.sentence_task != 'none':
      shapes.update(token_types=(rows, seq_len), sentence_labels=(rows, 1))
    return shapes

  def model_inputs(self, batch: dict) -> dict:
    inputs = super().model_inputs(batch)
    if self.sentence_task != 'none':
      inputs['token_type_ids'] = batch['token_types']
    return inputs

  def examples(self, batch: dict, rng: jax.Array, step: jax.Array, example_ids: jax.Array) -> dict:
    keys_b = masking.example_keys(rng, masking.MASK_STREAM, step, example_ids)
    ex = masking.mlm(batch, keys_b, self.masking)
    if self.sentence_task != 'none':  # one target per example; all-padding rows (eval) weigh 0
      ex.update(sentence_targets=batch['sentence_labels'],
                sentence_weights=(batch['segment_ids'][:, :1] > 0).astype(jnp.float32))
    return ex

  def _more_sums(self, sums: dict, sentence_logits_bc, ex: dict) -> dict:
    if self.sentence_task != 'none':
      sentence = weighted_cross_entropy(sentence_logits_bc[:, None], ex['sentence_targets'], ex['sentence_weights'])
      sums.update({f'sentence_{k}': v for k, v in sentence.items()})
    return sums

  def normalizers(self, ex: dict) -> dict:
    normalizers = super().normalizers(ex)
    if self.sentence_task != 'none':  # the batch's real examples
      normalizers['sentence_loss_sum'] = jnp.maximum(jnp.sum(ex['sentence_weights']), 1.0)
    return normalizers

  def train_metrics(self, sums: dict, on_host: bool = False) -> dict:
    """loss and accuracy (of the masked tokens); with a sentence task also sentence_loss, sentence_accuracy."""
    sentence = _mean(sums, 'sentence_', on_host) if self.sentence_task != 'none' else {}
    return {**_mean(sums, on_host=on_host), **sentence}

  def eval_metrics(self, sums: dict) -> dict:
    """The train metrics of the summed eval batches, as eval_loss, eval_accuracy, ..."""
    return {f'eval_{k}': v for k, v in self.train_metrics(sums, on_host=True).items()}

  def predicted_per_sequence(self, seq_len: int) -> int:
    return masking.max_predictions(seq_len, self.masking.mask_prob)


@dataclasses.dataclass(frozen=True)
class CausalLM(_TokenPrediction):
  name = 'clm'

  def examples(self, batch: dict, rng: jax.Array, step: jax.Array, example_ids: jax.Array) -> dict:
    """Position t predicts token t+1 of the same packed segment; padding never counts. Every position is
    predicted (`positions` is None)."""
    del rng, step, example_ids
    tokens_bt, segment_bt = batch['tokens'], batch['segment_ids']
    targets_bt = jnp.roll(tokens_bt, -1, axis=1)
    next_segment_bt = jnp.roll(segment_bt, -1, axis=1).at[:, -1].set(0)
    weights_bt = (segment_bt != 0) & (next_segment_bt == segment_bt)
    return {'inputs': tokens_bt, 'positions': None, 'targets': targets_bt,
            'weights': weights_bt.astype(jnp.float32)}

  def train_metrics(self, sums: dict) -> dict:
    return {'loss': _mean(sums)['loss']}

  def eval_metrics(self, sums: dict) -> dict:
    loss, accuracy = _mean(sums, on_host=True).values()
    return {'eval_loss': loss, 'eval_perplexity': math.exp(min(loss, 50.0)), 'eval_accuracy': accuracy}

  def predicted_per_sequence(self, seq_len: int) -> int:
    return seq_len


def build(name: str, mlm: MlmSettings, vocab_size: int, tokenizer=None, loss_chunk_tokens: int = 0):
  """The objective `name` for a model of vocab_size; MLM masks with the tokenizer's special ids (None: the
  ids our SentencePiece models reserve, for planning before a tokenizer exists). loss_chunk_tokens: see
  chunked_cross_entropy."""
  require(name in OBJECTIVES, f'objective: {name!r} is not one of {OBJECTIVES}')
  if name == 'clm':
    return CausalLM(loss_chunk_tokens=loss_chunk_tokens)
  if tokenizer is None:
    settings = masking.Masking(mask_id=PLANNING_MASK_ID, special_ids=RESERVED_SPECIAL_IDS,
                               random_vocab_size=vocab_size, mask_prob=mlm.mask_prob,
                               mask_token_prob=mlm.mask_token_prob, random_token_prob=mlm.random_token_prob,
                               word_starts=(True,) * vocab_size if mlm.whole_word_masking else None)
  else:
    settings = masking.Masking(mask_id=tokenizer.mask_id, special_ids=tuple(tokenizer.special_ids),
                               random_vocab_size=tokenizer.vocab_size, mask_prob=mlm.mask_prob,
                               mask_token_prob=mlm.mask_token_prob, random_token_prob=mlm.random_token_prob,
                               word_starts=(tuple(tokenizer.word_starts().tolist())
                                            if mlm.whole_word_masking else None))
  return MaskedLM(settings, mlm.sentence_task, loss_chunk_tokens=loss_chunk_tokens)


def weighted_cross_entropy(logits_btv: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array) -> dict:
  """Sums (not means) so that microbatches and hosts combine exactly: loss = loss_sum / weight_sum."""
  logits_btv = logits_btv.astype(jnp.float32)
  log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
  target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
  nll_bt = log_z_bt - target_logit_bt
  correct_bt = (jnp.argmax(logits_btv, axis=-1) == targets_bt).astype(jnp.float32)
  return {
      'loss_sum': jnp.sum(nll_bt * weights_bt),
      'correct_sum': jnp.sum(correct_bt * weights_bt),
      'weight_sum': jnp.sum(weights_bt),
  }


def chunked_cross_entropy(head_fn, hidden_btd: jax.Array, targets_bt: jax.Array, weights_bt: jax.Array,
                          chunk_tokens: int) -> dict:
  """weighted_cross_entropy(head_fn(hidden_btd), targets_bt, weights_bt), the output layer and the loss run over
  chunks of chunk_tokens tokens per data-parallel shard, one after another (lax.scan). A chunk's logits are
  recomputed in the backward pass (jax.checkpoint), so [chunk, vocab] float32 logits exist one chunk at a time.
  chunk_tokens 0, or a shard's tokens no more than one chunk: all at once, as weighted_cross_entropy.

  head_fn: hidden [batch, length, hidden] -> logits [batch, length, vocab] (LanguageModel.logits).
  The sums equal the unchunked ones up to float rounding (the order of the additions differs).
  """
  batch, length = targets_bt.shape
  shards = logical_axis_size('batch')
  shards = shards if batch % shards == 0 else 1
  tokens = batch * length // shards  # per shard: each shard's rows, flattened
  if chunk_tokens == 0 or tokens <= chunk_tokens:
    return weighted_cross_entropy(head_fn(hidden_btd), targets_bt, weights_bt)
  chunks = -(-tokens // chunk_tokens)

  def to_chunks(x_bt):
    """[batch, length, ...] -> [chunks, shards, chunk_tokens, ...]; the padding (weight 0) ends each shard."""
    x_st = x_bt.reshape(shards, tokens, *x_bt.shape[2:])
    x_st = jnp.pad(x_st, [(0, 0), (0, chunks * chunk_tokens - tokens)] + [(0, 0)] * (x_bt.ndim - 2))
    x_ksc = jnp.moveaxis(x_st.reshape(shards, chunks, chunk_tokens, *x_bt.shape[2:]), 1, 0)
    return constrain(x_ksc, (None, 'batch') + (None,) * (x_bt.ndim - 1))

  @functools.partial(jax.checkpoint, prevent_cse=False)
  def chunk_sums(hidden_scd, targets_sc, weights_sc):
    return weighted_cross_entropy(head_fn(hidden_scd), targets_sc, weights_sc)

  def add_chunk(sums, chunk):
    return jax.tree.map(jnp.add, sums, chunk_sums(*chunk)), None

  zeros = dict.fromkeys(('loss_sum', 'correct_sum', 'weight_sum'), jnp.zeros((), jnp.float32))
  return jax.lax.scan(add_chunk, zeros, tuple(map(to_chunks, (hidden_btd, targets_bt, weights_bt))))[0]
