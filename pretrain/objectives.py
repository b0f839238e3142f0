"""Pretraining objectives as pure functions of a packed batch: -> inputs, targets, per-token loss weights.

Batches hold `tokens`, `segment_ids` (1, 2, ... per packed document, 0 = padding) and `positions`,
all int32 [batch, length].
"""
import dataclasses

import jax
import jax.numpy as jnp

MASK_STREAM = 1  # folded into the seed so MLM masks and dropout draw from different streams
DROPOUT_STREAM = 2


@dataclasses.dataclass(frozen=True)
class MlmSettings:
  mask_id: int
  special_ids: tuple[int, ...]  # never chosen for prediction (pad, cls, sep, mask, ...)
  random_vocab_size: int  # random replacements are drawn from [0, random_vocab_size): the tokenizer's vocab
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1


def example_keys(seed_key: jax.Array, stream: int, step: jax.Array, batch_size: int) -> jax.Array:
  """One key per example, from (seed key, stream, step, example index in the global batch) alone.

  A resumed run, or a run on another number of hosts, draws the same randomness for the same step.
  """
  step_key = jax.random.fold_in(jax.random.fold_in(seed_key, stream), step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch_size))


def max_predictions(seq_len: int, mask_prob: float) -> int:
  """Static number of predicted slots per sequence: enough for round(seq_len * mask_prob)."""
  return max(1, round(seq_len * mask_prob))


def mlm(batch: dict, keys_b: jax.Array, settings: MlmSettings) -> dict:
  """BERT masking. Per sequence, exactly max(1, round(mask_prob * eligible)) of the real, non-special tokens
  are chosen (as in the original BERT data pipeline); of those 80% -> [MASK], 10% -> a random token, 10% kept.

  Only the chosen positions are predicted: `positions` [batch, K] indexes them (K = max_predictions), with
  `targets` and `weights` [batch, K]; unused slots have weight 0. The output layer then runs on K tokens per
  sequence instead of all of them.
  """
  tokens_bt = batch['tokens']
  num_slots = max_predictions(tokens_bt.shape[1], settings.mask_prob)
  special = jnp.asarray(settings.special_ids, tokens_bt.dtype)

  def mask_one(tokens_t, segments_t, key):
    choose_key, kind_key, random_key = jax.random.split(key, 3)
    eligible_t = ~jnp.isin(tokens_t, special) & (segments_t != 0)
    num_eligible = jnp.sum(eligible_t)
    count = jnp.clip(jnp.round(num_eligible * settings.mask_prob), jnp.minimum(num_eligible, 1), num_slots)
    scores_t = jnp.where(eligible_t, jax.random.uniform(choose_key, tokens_t.shape), 2.0)
    _, positions_k = jax.lax.top_k(-scores_t, num_slots)  # eligible tokens in random order first
    weights_k = jnp.arange(num_slots) < count
    kind_k = jax.random.uniform(kind_key, (num_slots,))
    random_k = jax.random.randint(random_key, (num_slots,), 0, settings.random_vocab_size, tokens_t.dtype)
    targets_k = tokens_t[positions_k]
    replaced_k = jnp.where(kind_k < settings.mask_token_prob, settings.mask_id,
                           jnp.where(kind_k < settings.mask_token_prob + settings.random_token_prob,
                                     random_k, targets_k))
    inputs_t = tokens_t.at[positions_k].set(jnp.where(weights_k, replaced_k, targets_k))
    return inputs_t, positions_k, targets_k, weights_k.astype(jnp.float32)

  inputs_bt, positions_bk, targets_bk, weights_bk = jax.vmap(mask_one)(tokens_bt, batch['segment_ids'], keys_b)
  return {'inputs': inputs_bt, 'positions': positions_bk, 'targets': targets_bk, 'weights': weights_bk}


def clm(batch: dict) -> dict:
  """Next-token prediction: position t predicts token t+1 of the same packed segment; padding never counts.
  Every position is predicted (`positions` is None)."""
  tokens_bt, segment_bt = batch['tokens'], batch['segment_ids']
  targets_bt = jnp.roll(tokens_bt, -1, axis=1)
  next_segment_bt = jnp.roll(segment_bt, -1, axis=1).at[:, -1].set(0)
  weights_bt = (segment_bt != 0) & (next_segment_bt == segment_bt)
  return {'inputs': tokens_bt, 'positions': None, 'targets': targets_bt, 'weights': weights_bt.astype(jnp.float32)}


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
