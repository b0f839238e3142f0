"""BERT's masking as pure functions of a packed batch: which tokens are predicted, and what replaces them.

Batches hold `tokens`, `segment_ids` (1, 2, ... per packed document, 0 = padding) and `positions`, all int32
[batch, length]. Randomness is drawn per example from (seed, stream, step, example index): `example_keys`.
"""
import dataclasses

import jax
import jax.numpy as jnp

MASK_STREAM = 1  # folded into the seed so MLM masks and dropout draw from different streams
DROPOUT_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Masking:
  mask_id: int
  special_ids: tuple[int, ...]  # never chosen for prediction (pad, cls, sep, mask, ...)
  random_vocab_size: int  # random replacements are drawn from [0, random_vocab_size): the tokenizer's vocab
  mask_prob: float = 0.15
  mask_token_prob: float = 0.8
  random_token_prob: float = 0.1
  # Whole-word masking: piece id -> the piece begins a word (Tokenizer.word_starts()); None masks per token.
  word_starts: tuple[bool, ...] | None = None


def example_keys(seed_key: jax.Array, stream: int, step: jax.Array, example_ids: jax.Array) -> jax.Array:
  """One key per example, from (seed key, stream, step, example index in the global batch) alone.

  A resumed run, a run on another number of hosts, or one split into microbatches draws the same randomness
  for the same example of the same step.
  """
  step_key = jax.random.fold_in(jax.random.fold_in(seed_key, stream), step)
  return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(example_ids)


def max_predictions(seq_len: int, mask_prob: float) -> int:
  """Static number of predicted slots per sequence: enough for round(seq_len * mask_prob)."""
  return max(1, round(seq_len * mask_prob))


def mlm(batch: dict, keys_b: jax.Array, settings: Masking) -> dict:
  """BERT masking. Per sequence, exactly max(1, round(mask_prob * eligible)) of the real, non-special tokens
  are chosen (as in the original BERT data pipeline); of those 80% -> [MASK], 10% -> a random token, 10% kept.
  With settings.word_starts, whole words are chosen instead (`whole_words`), and the count is a budget.

  Only the chosen positions are predicted: `positions` [batch, K] indexes them (K = max_predictions), with
  `targets` and `weights` [batch, K]; unused slots have weight 0. The output layer then runs on K tokens per
  sequence instead of all of them.
  """
  tokens_bt = batch['tokens']
  num_slots = max_predictions(tokens_bt.shape[1], settings.mask_prob)
  special = jnp.asarray(settings.special_ids, tokens_bt.dtype)
  word_starts_v = None if settings.word_starts is None else jnp.asarray(settings.word_starts, bool)

  def mask_one(tokens_t, segments_t, key):
    choose_key, kind_key, random_key = jax.random.split(key, 3)
    special_t = jnp.isin(tokens_t, special)
    eligible_t = ~special_t & (segments_t != 0)
    num_eligible = jnp.sum(eligible_t)
    count = jnp.clip(jnp.round(num_eligible * settings.mask_prob), jnp.minimum(num_eligible, 1), num_slots)
    uniform_t = jax.random.uniform(choose_key, tokens_t.shape)
    candidates_t = eligible_t  # per token: the first `count` of them in random order are chosen
    if word_starts_v is not None:  # whole words: exactly these tokens, at most `count` of them
      candidates_t = whole_words(word_starts_v[tokens_t], special_t, segments_t, eligible_t, uniform_t, count,
                                 num_slots)
      count = jnp.sum(candidates_t)
    scores_t = jnp.where(candidates_t, uniform_t, 2.0)
    _, positions_k = jax.lax.top_k(-scores_t, num_slots)  # candidates in random order first
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


def whole_words(piece_starts_t: jax.Array, special_t: jax.Array, segments_t: jax.Array, eligible_t: jax.Array,
                uniform_t: jax.Array, budget: jax.Array, max_budget: int) -> jax.Array:
  """bool [length]: the eligible tokens of the words whole-word masking predicts, for one sequence.

  A token begins a word when its piece begins one (piece_starts_t), when it is special or follows a special, or
  when a new segment begins. Words are visited in a random order (each word's key: uniform_t at its first token)
  and, as in BERT's create_pretraining_data, a word is taken when the running token count plus its size stays
  <= budget, else skipped. With every piece a word start, it chooses exactly what per-token masking chooses.
  """
  length = piece_starts_t.shape[0]
  starts_t = (piece_starts_t | special_t | jnp.roll(special_t, 1) | (segments_t != jnp.roll(segments_t, 1))
              ).at[0].set(True)
  word_t = jnp.cumsum(starts_t) - 1  # [length] word index of each token
  size_w = jax.ops.segment_sum(eligible_t.astype(jnp.int32), word_t, num_segments=length)
  score_w = jnp.full(length, 2.0).at[jnp.where(starts_t, word_t, length)].set(uniform_t, mode='drop')
  order_w = jnp.argsort(jnp.where(size_w > 0, score_w, 2.0))  # words to try, first to last
  taken_w = jnp.zeros(length, bool).at[order_w].set(_greedy_fits(size_w[order_w], budget, max_budget))
  return eligible_t & taken_w[word_t]


def _greedy_fits(sizes_w: jax.Array, budget: jax.Array, max_budget: int) -> jax.Array:
  """bool [words]: in order, each word is taken when the running total plus its size stays <= budget.

  Word w maps the running total c to c + size_w if that fits, else to c: a table over c in 0..max_budget.
  The tables compose associatively, so lax.associative_scan runs the sequential pass in log(words) steps.
  """
  counts_c = jnp.arange(max_budget + 1)
  grown_wc = counts_c + sizes_w[:, None]
  maps_wc = jnp.where(grown_wc <= budget, grown_wc, counts_c)
  then = lambda first_wc, second_wc: jnp.take_along_axis(second_wc, first_wc, axis=-1)
  after_w = jax.lax.associative_scan(then, maps_wc)[:, 0]  # running total after each word, starting from 0
  before_w = jnp.concatenate([jnp.zeros(1, after_w.dtype), after_w[:-1]])
  return after_w > before_w
