"""AdamW settings: warmup then decay, clipping, and no weight decay on norms and biases."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from pretrain import optim
from pretrain.runtime.errors import ConfigError
from pretrain.model.heads import LanguageModel
from tests.helpers import tiny_config, tiny_model_config


def test_schedule_warms_up_then_decays_to_the_end_value():
  train = tiny_config('mlm').train
  train.steps, train.warmup_steps, train.learning_rate = 100, 10, 1e-3
  schedule = optim.learning_rate_schedule(optim.OptimizerSettings.pick(train))
  assert float(schedule(0)) == 0.0
  np.testing.assert_allclose(float(schedule(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(10)), 1e-3, rtol=1e-6)
  np.testing.assert_allclose(float(schedule(55)), 5e-4, rtol=1e-6)  # linear decay halfway
  np.testing.assert_allclose(float(schedule(100)), 0.0, atol=1e-9)
  train.schedule = 'cosine'
  np.testing.assert_allclose(float(optim.learning_rate_schedule(optim.OptimizerSettings.pick(train))(55)), 5e-4,
                             rtol=1e-5)


def test_weight_decay_skips_norms_and_biases():
  params = nnx.to_pure_dict(nnx.state(LanguageModel(tiny_model_config('mlm'), nnx.Rngs(0)), nnx.Param))
  mask = optim.weight_decay_mask(params)
  flat = {jax.tree_util.keystr(p, simple=True, separator='/'): m
          for p, m in jax.tree_util.tree_leaves_with_path(mask)}
  assert flat['encoder/token_embed'] and flat['encoder/blocks/mlp/wi/kernel']
  assert not flat['encoder/blocks/mlp/wi/bias'] and not flat['encoder/embed_norm/scale']
  assert not flat['mlm_head/bias'] and not flat['encoder/blocks/attention_norm/bias']
  # With zero gradients, only decayed parameters move.
  train = tiny_config('mlm').train
  train.warmup_steps, train.weight_decay = 0, 0.5
  tx = optim.make_optimizer(optim.OptimizerSettings.pick(train))
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  moved = jax.tree.map(lambda u: bool(jnp.any(u != 0)), updates)
  assert moved == mask


def test_gradients_are_clipped_to_the_global_norm():
  train = tiny_config('mlm').train
  train.warmup_steps, train.weight_decay, train.grad_clip_norm, train.b1 = 0, 0.0, 1.0, 0.9
  tx = optim.make_optimizer(optim.OptimizerSettings.pick(train))
  params = {'w': jnp.zeros(4)}
  _, state = tx.update({'w': jnp.full(4, 100.0)}, tx.init(params), params)  # global norm 200
  adam_mu = state[1][0].mu['w']
  np.testing.assert_allclose(adam_mu, 0.1 * 0.5, rtol=1e-6)  # (1 - b1) * gradient clipped to norm 1


@pytest.mark.parametrize('shape', ['1-sqrt', 'linear'])
def test_wsd_warms_up_stays_at_the_peak_then_decays_over_the_last_fraction(shape):
  train = tiny_config('mlm').train
  train.update(steps=1000, warmup_steps=100, learning_rate=1e-3, end_learning_rate_fraction=0.1, schedule='wsd',
               decay_fraction=0.2, decay_shape=shape)
  settings = optim.OptimizerSettings.pick(train)
  schedule = optim.learning_rate_schedule(settings)
  assert optim.wsd_decay_start(settings) == 800  # the last 20% of 1000 steps
  peak, end = 1e-3, 1e-4
  np.testing.assert_allclose(float(schedule(50)), 5e-4, rtol=1e-6)  # warming up
  for step in (100, 450, 799, 800):  # warmup end, mid-stable, just before and at the decay start: the peak
    np.testing.assert_allclose(float(schedule(step)), peak, rtol=1e-6)
  # A quarter of the decay done: 1-sqrt has shed half of (peak - end) already, linear a quarter.
  remaining = {'1-sqrt': 1 - np.sqrt(0.25), 'linear': 0.75}[shape]
  np.testing.assert_allclose(float(schedule(850)), end + (peak - end) * remaining, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(1000)), end, rtol=1e-5)  # the end value at the last step...
  np.testing.assert_allclose(float(schedule(1200)), end, rtol=1e-5)  # ...and after it
  # Without a warmup the stable phase starts at step 0; a decay longer than the run after the warmup starts right
  # after the warmup.
  no_warmup = optim.learning_rate_schedule(optim.OptimizerSettings.pick(train, warmup_steps=0))
  np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 800)], [peak, peak], rtol=1e-6)
  whole = optim.OptimizerSettings.pick(train, decay_fraction=1.0)
  assert optim.wsd_decay_start(whole) == 100
  np.testing.assert_allclose(float(optim.learning_rate_schedule(whole)(100)), peak, rtol=1e-6)
  np.testing.assert_allclose(float(optim.learning_rate_schedule(whole)(550)), end + (peak - end) * (
      1 - np.sqrt(0.5) if shape == '1-sqrt' else 0.5), rtol=1e-5)


def test_a_config_without_the_wsd_fields_gets_their_defaults():
  """Fine-tuning's config.train (configs/finetune_glue.py) predates decay_fraction and decay_shape."""
  from configs import finetune_glue  # pylint: disable=import-outside-toplevel
  from finetune.checks import optimizer_settings  # pylint: disable=import-outside-toplevel
  train = finetune_glue.get_config().train
  assert 'decay_fraction' not in train
  settings = optimizer_settings(train, total_steps=100)
  assert (settings.decay_fraction, settings.decay_shape, settings.steps) == (0.1, '1-sqrt', 100)
  with pytest.raises(ConfigError, match=r'^train\.schedule'):
    optimizer_settings(ml_collections.ConfigDict({**train.to_dict(), 'schedule': 'wsdd'}), total_steps=100)


@pytest.mark.parametrize('field,value', [('schedule', 'step'), ('learning_rate', 0.0), ('steps', 0),
                                         ('warmup_steps', -1), ('grad_clip_norm', -1.0), ('decay_fraction', 0.0),
                                         ('decay_fraction', 1.5), ('decay_shape', 'sqrt')])
def test_bad_optimizer_settings_name_the_field(field, value):
  train = tiny_config('mlm').train
  train[field] = value
  with pytest.raises(ConfigError, match=rf'^train\.{field}'):
    optim.OptimizerSettings.pick(train)
