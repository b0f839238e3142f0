"""The modernbert fields at the model level: local attention layers (the window within a document, their own
rotary base), layer 0 without an attention norm, the GeGLU MLP, the classifier's pooled transform, and the fields'
errors. Parity with transformers' ModernBERT is in test_modernbert_conversion.py."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.model import presets
from pretrain.model.attention import Attention
from pretrain.model.heads import Classifier, LanguageModel
from pretrain.model.kv_cache import KVCache
from pretrain.model.layers import Mlp
from pretrain.runtime.errors import ConfigError
from tests.helpers import TINY_LOCAL_WINDOW, tiny_model_config

HALF = TINY_LOCAL_WINDOW // 2


def _inputs(length=32, seed=0):
  x_btd = jax.random.normal(jax.random.key(seed), (1, length, 64))
  return x_btd, jnp.ones((1, length), jnp.int32), jnp.arange(length, dtype=jnp.int32)[None]


def _changed_outputs(attention, is_global, at, segment_ids=None, length=32):
  """Which tokens' attention outputs change when the input at position `at` changes."""
  x_btd, ones_bt, positions_bt = _inputs(length)
  segment_ids = ones_bt if segment_ids is None else segment_ids
  before = attention(x_btd, segment_ids, positions_bt, None, None, is_global)
  after = attention(x_btd.at[:, at].add(1.0), segment_ids, positions_bt, None, None, is_global)
  return set(np.flatnonzero(np.abs(np.asarray(after - before)).max(axis=(0, 2)) > 1e-6).tolist())


def test_a_local_layer_sees_only_its_window_and_a_global_layer_everything():
  """ModernBERT's sliding window: a token of a local layer reads the tokens within local_window // 2 positions
  either side (distance <= half, as transformers' mask), a global layer's reads them all."""
  attention = Attention(tiny_model_config('modernbert'), nnx.Rngs(0))
  assert _changed_outputs(attention, jnp.bool_(False), at=20) == set(range(20 - HALF, 20 + HALF + 1))
  assert _changed_outputs(attention, jnp.bool_(True), at=20) == set(range(32))


def test_the_window_applies_within_a_packed_document():
  """Packed documents never attend across each other, even when a token of the other one is within the window."""
  attention = Attention(tiny_model_config('modernbert'), nnx.Rngs(0))
  segment_ids = jnp.asarray([[1] * 16 + [2] * 16], jnp.int32)
  assert _changed_outputs(attention, jnp.bool_(False), at=17, segment_ids=segment_ids) == set(range(16, 17 + HALF + 1))
  assert _changed_outputs(attention, jnp.bool_(True), at=17, segment_ids=segment_ids) == set(range(16, 32))


def test_local_layers_rotate_with_their_own_base():
  """A local layer on a sequence inside its window is a global layer with rope_theta = local_rope_theta; with the
  global base instead its output differs (the mistake a shared theta would make)."""
  cfg = tiny_model_config('modernbert')
  local = Attention(cfg, nnx.Rngs(0))
  for projection in (local.query, local.key):  # scores far from 0, so that the rotation shows
    projection.kernel[...] = 20.0 * projection.kernel[...]
  x_btd, ones_bt, positions_bt = _inputs(length=HALF)
  ours = local(x_btd, ones_bt, positions_bt, None, None, jnp.bool_(False))
  as_global = Attention(dataclasses.replace(cfg, rope_theta=cfg.local_rope_theta, local_window=0), nnx.Rngs(0))
  nnx.update(as_global, nnx.state(local))
  np.testing.assert_allclose(ours, as_global(x_btd, ones_bt, positions_bt, None), atol=1e-6)
  assert cfg.local_rope_theta != cfg.rope_theta
  assert not np.allclose(ours, local(x_btd, ones_bt, positions_bt, None, None, jnp.bool_(True)), atol=1e-3)


def test_layer_zero_reads_the_normed_embeddings_without_an_attention_norm():
  """modernbert (first_attention_norm false): layer 0's attention norm is never applied, so its scale changes
  nothing; layer 1's does. With first_attention_norm true both matter."""
  tokens = jax.random.randint(jax.random.key(1), (2, 32), 5, 512)

  def logits_after_scaling(model, layer):
    before = model(tokens)
    scale = model.encoder.blocks.attention_norm.scale
    scale[...] = scale[...].at[layer].multiply(3.0)
    return before, model(tokens)

  for layer, matters in ((0, False), (1, True)):
    before, after = logits_after_scaling(LanguageModel(tiny_model_config('modernbert'), nnx.Rngs(0)), layer)
    assert np.allclose(before, after, atol=1e-6) != matters, layer
  before, after = logits_after_scaling(
      LanguageModel(tiny_model_config('modernbert', first_attention_norm=True), nnx.Rngs(0)), 0)
  assert not np.allclose(before, after, atol=1e-3)


def test_geglu_gates_with_exact_gelu():
  """GeGLU is wo(gelu(wi_gate x) * wi_up x) with the exact (erf) GELU of transformers' 'gelu'; the tanh
  approximation would differ by more than the tolerance."""
  mlp = Mlp(tiny_model_config('modernbert'), nnx.Rngs(0))
  x_btd = 3.0 * jax.random.normal(jax.random.key(2), (2, 5, 64))
  gate, up, out = (m.kernel[...] for m in (mlp.wi_gate, mlp.wi_up, mlp.wo))
  for approximate, same in ((False, True), (True, False)):
    expected = (jax.nn.gelu(x_btd @ gate, approximate=approximate) * (x_btd @ up)) @ out
    assert np.allclose(mlp(x_btd), expected, atol=1e-6, rtol=1e-5) == same


def test_the_classifier_passes_the_pooled_vector_through_the_heads_transform():
  """As ModernBertForSequenceClassification: pool (mean or cls) -> dense + GELU + norm -> classifier with a bias.
  'cls' reads the first token only."""
  cfg = tiny_model_config('modernbert', dropout_rate=0.0)
  model = Classifier(cfg, 3, nnx.Rngs(0), pooling='cls')
  assert model.pooled_transform is not None and model.head.bias is not None
  tokens = jax.random.randint(jax.random.key(3), (2, 32), 5, 512)
  types, segments = jnp.zeros_like(tokens), jnp.ones_like(tokens)
  hidden = model.encoder(tokens, segment_ids=segments)
  expected = model.head(model.pooled_transform.before_output(hidden[:, 0]))
  np.testing.assert_allclose(model(tokens, types, segments), expected, atol=1e-6)
  assert Classifier(tiny_model_config('mlm'), 3, nnx.Rngs(0)).pooled_transform is None  # bert: its pooler


def test_modernbert_is_its_own_preset_and_other_presets_have_no_local_layers():
  cfg = tiny_model_config('modernbert')
  assert presets.describe(cfg) == 'modernbert' and cfg.has_local_layers
  bert = dataclasses.replace(tiny_model_config('mlm'), local_window=16, global_every=3)
  assert presets.describe(bert).startswith('custom (bert with local_window=16')


@pytest.mark.parametrize('field, value, match', [
    ('local_window', -1, 'model.local_window: must be >= 0'),
    ('global_every', 0, 'model.global_every: must be >= 1'),
    ('local_rope_theta', -1.0, 'model.local_rope_theta'),
])
def test_bad_local_attention_fields_name_the_field(field, value, match):
  with pytest.raises(ConfigError, match=match):
    tiny_model_config('modernbert', **{field: value})


def test_no_first_attention_norm_needs_pre_norm():
  with pytest.raises(ConfigError, match='model.first_attention_norm'):
    dataclasses.replace(tiny_model_config('mlm'), first_attention_norm=False).validate()


def test_a_kv_cache_refuses_local_layers():
  """The cache's mask has no window: a causal model with local layers says so rather than decode wrongly."""
  cfg = dataclasses.replace(tiny_model_config('llama'), local_window=8, global_every=2)
  model = LanguageModel(cfg, nnx.Rngs(0))
  with pytest.raises(ValueError, match='local layers'):
    model.decode(jnp.ones((1, 4), jnp.int32), KVCache.zeros(cfg, batch=1, slots=16))
