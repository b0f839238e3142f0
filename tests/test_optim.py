"""AdamW settings: warmup then decay, clipping, and no weight decay on norms and biases."""
import jax
import jax.numpy as jnp
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


@pytest.mark.parametrize('field,value', [('schedule', 'step'), ('learning_rate', 0.0), ('steps', 0),
                                         ('warmup_steps', -1), ('grad_clip_norm', -1.0)])
def test_bad_optimizer_settings_name_the_field(field, value):
  train = tiny_config('mlm').train
  train[field] = value
  with pytest.raises(ConfigError, match=rf'train\.{field}'):
    optim.OptimizerSettings.pick(train)
