"""The Transformer: shapes, causality, packed-segment isolation, dropout, remat and dtypes."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.runtime.errors import ConfigError
from pretrain.model.config import ModelConfig
from pretrain.model.heads import Classifier, LanguageModel
from pretrain.model.layers import RMSNorm
from tests.helpers import tiny_config, tiny_model_config

B, T = 2, 16


def _model(kind='mlm', **overrides):
  return LanguageModel(tiny_model_config(kind, **overrides), nnx.Rngs(0))


def _tokens(seed=0):
  return jax.random.randint(jax.random.key(seed), (B, T), 5, 512)


@pytest.mark.parametrize('kind', ['mlm', 'clm', 'llama'])
def test_logits_shape_and_dtype(kind):
  model = _model(kind, dtype='bfloat16')
  logits = model(_tokens())
  assert logits.shape == (B, T, 512) and logits.dtype == jnp.float32
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert bool(jnp.all(jnp.isfinite(logits)))
  positions = jnp.array([[0, 3, 5], [1, 2, 15]])
  gathered = model(_tokens(), predict_positions=positions)
  assert gathered.shape == (B, 3, 512)
  np.testing.assert_allclose(gathered[1, 2], logits[1, 15], atol=2e-2)


def test_presets_have_their_parts():
  bert, gpt2 = _model('mlm'), _model('clm')
  assert bert.encoder.type_embed is not None and bert.encoder.pooler is not None and bert.mlm_head is not None
  assert bert.encoder.embed_norm is not None and bert.encoder.final_norm is None
  assert gpt2.encoder.type_embed is None and gpt2.mlm_head is None
  assert gpt2.encoder.final_norm is not None and gpt2.encoder.embed_norm is None
  assert bert.encoder.pool(bert.encoder(_tokens())).shape == (B, 64)
  # Layers are scanned: one stacked parameter per weight, leading axis = num_layers.
  assert bert.encoder.blocks.mlp.wi.kernel[...].shape == (2, 64, 128)
  llama = _model('llama')  # rotary positions, RMSNorm, SwiGLU, 2 kv heads of width 16, an untied head, no biases
  assert llama.encoder.position_embed is None and llama.encoder.type_embed is None and llama.mlm_head is None
  assert isinstance(llama.encoder.blocks.attention_norm, RMSNorm) and isinstance(llama.encoder.final_norm, RMSNorm)
  assert llama.encoder.blocks.mlp.wi is None and llama.encoder.blocks.mlp.wi_gate.kernel[...].shape == (2, 64, 128)
  assert llama.encoder.blocks.attention.key.kernel[...].shape == (2, 64, 2, 16)
  assert llama.lm_head.kernel[...].shape == (64, 512) and llama.encoder.blocks.attention.query.bias is None


@pytest.mark.parametrize('kind', ['clm', 'llama'])
def test_causal_model_never_sees_the_future(kind):
  model = _model(kind)
  tokens = _tokens()
  changed = tokens.at[:, 10:].set(7)
  a, b = model(tokens), model(changed)
  np.testing.assert_allclose(a[:, :10], b[:, :10], atol=1e-5)
  assert not np.allclose(a[:, 10:], b[:, 10:], atol=1e-3)


def test_bidirectional_model_sees_the_future():
  model = _model('mlm')
  tokens = _tokens()
  a, b = model(tokens), model(tokens.at[:, 10:].set(7))
  assert not np.allclose(a[:, :10], b[:, :10], atol=1e-3)


@pytest.mark.parametrize('kind', ['mlm', 'clm', 'llama'])
def test_packed_segments_do_not_attend_to_each_other(kind):
  model = _model(kind)
  segments = jnp.array([[1] * 6 + [2] * 6 + [0] * 4] * B)
  positions = jnp.array([list(range(6)) * 2 + [0] * 4] * B)
  tokens = _tokens()
  other = tokens.at[:, 6:].set(9)  # change the second document and the padding
  a = model(tokens, segment_ids=segments, positions=positions)
  b = model(other, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-5)
  # A packed document gives the same output as the same document alone in its own row.
  alone = model(tokens[:, :6])
  np.testing.assert_allclose(a[:, :6], alone, atol=1e-4)


def test_dropout_only_with_a_key():
  model = _model('mlm', dropout_rate=0.3, attention_dropout_rate=0.2)
  tokens = _tokens()
  np.testing.assert_array_equal(model(tokens), model(tokens))
  k1, k2 = jax.random.key(1), jax.random.key(2)
  np.testing.assert_array_equal(model(tokens, dropout_key=k1), model(tokens, dropout_key=k1))
  assert not np.allclose(model(tokens, dropout_key=k1), model(tokens, dropout_key=k2))
  assert not np.allclose(model(tokens, dropout_key=k1), model(tokens))


@pytest.mark.parametrize('policy', ['full', 'dots_saveable', 'dots_with_no_batch_dims'])
def test_remat_changes_nothing_but_memory(policy):
  tokens = _tokens()

  def loss_and_grads(remat_policy):
    model = _model('clm', remat_policy=remat_policy)
    graphdef, params = nnx.split(model)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)

  (l0, g0), (l1, g1) = loss_and_grads('none'), loss_and_grads(policy)
  np.testing.assert_allclose(l0, l1, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g0, g1)


@pytest.mark.parametrize('field,value,message', [
    ('num_heads', 5, 'model.num_heads: 5 does not divide model.hidden_size 64'),
    ('norm_position', 'middle', "model.norm_position: 'middle' is not one of ('pre', 'post')"),
    ('dtype', 'float8', 'model.dtype'),
    ('remat_policy', 'some', 'model.remat_policy'),
    ('dropout_rate', 1.5, 'model.dropout_rate'),
])
def test_bad_model_settings_name_the_field(field, value, message):
  config = tiny_config('mlm')
  config.model[field] = value
  with pytest.raises(ConfigError, match=re.escape(message)):
    ModelConfig.from_config(config.model)


@pytest.mark.parametrize('objective,pooling,pooled_by', [('clm', 'auto', 'last'), ('mlm', 'auto', 'pooler'),
                                                        ('mlm', 'mean', 'mean'), ('clm', 'mean', 'mean')])
def test_the_classifier_pools_the_tokens_its_pooling_names(objective, pooling, pooled_by):
  """gpt2 (auto): the hidden state of the last real token; bert (auto): the pooler over the first token; mean:
  the mean over the real tokens only. Whatever the padding holds, the pooled vector stays the same."""
  cfg = tiny_model_config(objective)
  model = Classifier(cfg, 3, nnx.Rngs(0), pooling)
  assert model.pooling == pooled_by
  hidden = jax.random.normal(jax.random.key(0), (2, 6, cfg.hidden_size))
  segments = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])  # 4 and 2 real tokens
  expected = {
      'last': lambda: jnp.stack([hidden[0, 3], hidden[1, 1]]),
      'mean': lambda: jnp.stack([hidden[0, :4].mean(0), hidden[1, :2].mean(0)]),
      'pooler': lambda: jnp.tanh(hidden[:, 0] @ model.encoder.pooler.kernel[...] + model.encoder.pooler.bias[...]),
  }[pooled_by]()
  np.testing.assert_allclose(model.pool(hidden, segments), expected, atol=1e-6)
  padding_changed = hidden.at[0, 4:].set(100.0).at[1, 2:].set(-100.0)
  np.testing.assert_array_equal(model.pool(padding_changed, segments), model.pool(hidden, segments))
