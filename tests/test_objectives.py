"""MLM masking statistics and determinism; CLM targets; the weighted loss."""
import jax
import jax.numpy as jnp
import numpy as np

from pretrain import masking, objectives

SPECIAL = (0, 1, 2, 3, 4)  # pad, unk, cls, sep, mask
MASK_ID, VOCAB = 4, 1000
SETTINGS = masking.Masking(mask_id=MASK_ID, special_ids=SPECIAL, random_vocab_size=VOCAB)


def _batch(batch=64, length=128, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, VOCAB, (batch, length), dtype=np.int32)
  segments = np.ones((batch, length), np.int32)
  tokens[:, 0], tokens[:, 60] = 2, 3  # [CLS] ... [SEP]
  segments[:, 100:] = 0  # padding
  tokens[:, 100:] = 0
  return {'tokens': jnp.asarray(tokens), 'segment_ids': jnp.asarray(segments)}


def _mask(batch, step=0, seed=0):
  keys = masking.example_keys(jax.random.key(seed), masking.MASK_STREAM, jnp.asarray(step),
                              jnp.arange(batch['tokens'].shape[0]))
  return masking.mlm(batch, keys, SETTINGS)


def test_mlm_mask_statistics():
  batch = _batch()
  out = jax.device_get(_mask(batch))
  tokens = np.asarray(batch['tokens'])
  rows = np.arange(tokens.shape[0])[:, None]
  chosen = out['weights'] > 0
  positions = out['positions']
  # Exactly round(15% of the 98 eligible tokens) per sequence, at distinct positions, never special or pad.
  assert (chosen.sum(1) == round(0.15 * 98)).all()
  for row_positions, row_chosen in zip(positions, chosen):
    assert len(set(row_positions[row_chosen])) == row_chosen.sum()
  picked = tokens[rows, positions][chosen]
  assert not np.isin(picked, SPECIAL).any()
  np.testing.assert_array_equal(out['targets'][chosen], picked)
  # 80% become [MASK], 10% a random token, 10% stay (binomial tolerance for ~900 draws).
  new = out['inputs'][rows, positions][chosen]
  frac_mask = np.mean(new == MASK_ID)
  frac_same = np.mean(new == picked)
  assert abs(frac_mask - 0.8) < 0.04, frac_mask
  assert abs(frac_same - (0.1 + 0.1 / VOCAB)) < 0.03, frac_same
  # Positions not chosen are never altered.
  untouched = np.ones_like(tokens, bool)
  untouched[rows, positions] = ~chosen
  np.testing.assert_array_equal(out['inputs'][untouched], tokens[untouched])


def test_mlm_masks_depend_on_seed_step_and_example_only():
  batch = _batch(batch=8)
  a = _mask(batch, step=5)
  np.testing.assert_array_equal(a['inputs'], _mask(batch, step=5)['inputs'])
  assert not np.array_equal(a['inputs'], _mask(batch, step=6)['inputs'])
  assert not np.array_equal(a['inputs'], _mask(batch, step=5, seed=1)['inputs'])
  # The first 4 examples get the same masks whether the batch holds 4 or 8 of them (host-count independent).
  half = {k: v[:4] for k, v in batch.items()}
  np.testing.assert_array_equal(_mask(half, step=5)['inputs'], a['inputs'][:4])


def test_clm_targets_stay_inside_segments():
  tokens = jnp.array([[10, 11, 12, 20, 21, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0, 0]])
  out = objectives.CausalLM().examples({'tokens': tokens, 'segment_ids': segments}, None, None, None)
  np.testing.assert_array_equal(out['targets'][0, :4], [11, 12, 20, 21])
  # 10->11, 11->12 and 20->21 count; 12->20 crosses documents; padding and the last position never count.
  np.testing.assert_array_equal(out['weights'][0], [1, 1, 0, 1, 0, 0, 0])


def test_weighted_cross_entropy_matches_a_hand_count():
  logits = jnp.log(jnp.array([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]]))
  out = objectives.weighted_cross_entropy(logits, jnp.array([[0, 1]]), jnp.array([[1.0, 0.0]]))
  np.testing.assert_allclose(out['loss_sum'], -np.log(0.7), rtol=1e-6)
  assert float(out['correct_sum']) == 1.0 and float(out['weight_sum']) == 1.0
