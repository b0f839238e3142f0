"""Architecture as fields: presets, the objective no longer implying the architecture, the field roles that decide
what a checkpoint fixes, and the new fields' effect on the parameters."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain import train
from pretrain.model import presets
from pretrain.model.config import ModelConfig, fields_with_role, from_checkpoint_meta
from pretrain.model.heads import LanguageModel
from pretrain.model.hf_config import hf_preset
from pretrain.model.load import flatten
from pretrain.runtime.errors import ConfigError
from pretrain.settings import PretrainSettings, check_resumable, resume_fields
from tests.helpers import tiny_config, tiny_model_config


def test_the_config_files_fill_in_their_preset_and_the_hf_class_follows_the_fields():
  bert, gpt2 = tiny_model_config('mlm'), tiny_model_config('clm')
  assert presets.preset_of(bert) == 'bert' and presets.preset_of(gpt2) == 'gpt2'
  assert (bert.norm_position, bert.mlp, bert.pooler, bert.causal) == ('post', 'gelu', True, False)
  assert (gpt2.norm_position, gpt2.mlp, gpt2.final_norm, gpt2.causal) == ('pre', 'gelu_tanh', True, True)
  pre_ln = dataclasses.replace(bert, norm_position='pre', embedding_norm=False, final_norm=True)
  assert presets.preset_of(pre_ln) is None
  assert presets.describe(pre_ln) == ("custom (bert with norm_position='pre' (bert: 'post'), embedding_norm=False "
                                      "(bert: True), final_norm=True (bert: False))")
  with pytest.raises(ConfigError, match=r"^--checkpoint: the model is custom \(bert with norm_position='pre'"):
    hf_preset(pre_ln)
  assert presets.differences(dataclasses.replace(gpt2, type_vocab_size=2), 'gpt2') == [
      'type_vocab_size=2 (gpt2: 0)']


def test_the_modernbert_config_keeps_its_presets_rotary_bases_and_a_checkpoint_fixes_its_local_layers():
  from configs import common, pretrain_llama, pretrain_modernbert  # pylint: disable=import-outside-toplevel
  # base_config fills rope_theta from the preset (modernbert: 160000 for the global layers) unless the size sets
  # one (llama-8b: 500000); before, the preset's value was overwritten with 10000, or raised a duplicate keyword.
  for size in common.MODERNBERT_SIZES:
    model = ModelConfig.from_config(pretrain_modernbert.get_config(size).model)
    assert presets.preset_of(model) == 'modernbert', (size, presets.describe(model))
    assert (model.rope_theta, model.local_rope_theta, model.global_every, model.mlp) == (160000, 10000, 3, 'geglu')
    assert model.local_window == (64 if size == 'tiny' else 128)
  assert pretrain_llama.get_config('llama-8b').model.rope_theta == 500_000
  assert pretrain_llama.get_config('tiny').model.rope_theta == 10_000
  base = ModelConfig.from_config(pretrain_modernbert.get_config('modernbert-base').model)
  assert (base.num_layers, base.hidden_size, base.num_heads, base.mlp_dim, base.vocab_size) == (22, 768, 12, 1152,
                                                                                                50368)
  assert not base.first_attention_norm and base.max_position_embeddings == 8192
  # The local layers are architecture: a resume with another window or rotary base is refused.
  meta = {'config': json.loads(PretrainSettings.from_config(tiny_config('modernbert')).to_json())}
  for field, value in (('local_window', 32), ('global_every', 2), ('local_rope_theta', 5e5),
                       ('first_attention_norm', True)):
    with pytest.raises(ConfigError, match=rf'^model\.{field}: .* differs from .* in the checkpoint at ckpt'):
      check_resumable(PretrainSettings.from_config(tiny_config('modernbert', **{field: value})), meta, 'ckpt')


def test_a_pre_ln_mlm_encoder_is_allowed_and_a_causal_mlm_is_an_error_naming_the_field(tmp_path):
  config = tiny_config('mlm')
  config.model.update(norm_position='pre', embedding_norm=False, final_norm=True)
  config.train.update(steps=2, log_every=1, eval_every=2, eval_batches=1, checkpoint_every=2)
  summary = train.run(config, str(tmp_path))
  assert summary['step'] == 2 and np.isfinite(summary['loss'])
  config = tiny_config('mlm')
  config.model.causal = True
  with pytest.raises(ConfigError, match=r"^model\.causal: objective 'mlm' predicts masked tokens from both sides"):
    PretrainSettings.from_config(config)
  config = tiny_config('clm')
  config.model.causal = False
  with pytest.raises(ConfigError, match=r"^model\.causal: objective 'clm' needs a causal model"):
    PretrainSettings.from_config(config)
  config = tiny_config('mlm')
  config.model.pooler, config.mlm.sentence_task = False, 'nsp'
  with pytest.raises(ConfigError, match=r'^model\.pooler: the sentence head'):
    PretrainSettings.from_config(config)


def test_roles_decide_what_a_checkpoint_fixes():
  assert set(fields_with_role('runtime')) == {'dropout_rate', 'attention_dropout_rate', 'dtype', 'remat_policy',
                                             'attention_impl'}
  architecture = fields_with_role('architecture')
  assert {'layer_norm_eps', 'norm_position', 'mlp', 'causal', 'vocab_size', 'tie_embeddings', 'norm', 'positions',
          'num_kv_heads', 'head_dim', 'rope_theta'} <= set(architecture)
  assert resume_fields() == ('objective', 'mlm.sentence_task', *(f'model.{f}' for f in architecture))
  config = tiny_config('mlm')
  meta = {'config': json.loads(PretrainSettings.from_config(config).to_json())}
  for field, value in (('norm_position', 'pre'), ('layer_norm_eps', 1e-6), ('mlp', 'gelu_tanh'), ('num_kv_heads', 2),
                       ('rope_theta', 5e5)):
    changed = tiny_config('mlm')
    changed.model[field] = value
    with pytest.raises(ConfigError, match=rf'^model\.{field}: .* differs from .* in the checkpoint at ckpt'):
      check_resumable(PretrainSettings.from_config(changed), meta, 'ckpt')
  runtime = tiny_config('mlm')
  runtime.model.update(dropout_rate=0.0, dtype='bfloat16', remat_policy='full', attention_impl='xla')  # free to change
  check_resumable(PretrainSettings.from_config(runtime), meta, 'ckpt')


def test_meta_of_any_version_gives_the_architecture_it_was_trained_with():
  legacy = {'config': {'objective': 'clm', 'model': {
      'variant': 'gpt2', 'vocab_size': 512, 'hidden_size': 32, 'num_layers': 1, 'num_heads': 2, 'mlp_dim': 64,
      'max_position_embeddings': 64, 'type_vocab_size': 0, 'dropout_rate': 0.1, 'attention_dropout_rate': 0.0,
      'layer_norm_eps': 1e-5, 'initializer_range': 0.02, 'dtype': 'float32', 'remat_policy': 'none'}}}
  cfg = from_checkpoint_meta(legacy, dropout_rate=0.0)
  assert presets.preset_of(cfg) == 'gpt2' and cfg.hidden_size == 32 and cfg.dropout_rate == 0.0
  current = {'config': json.loads(PretrainSettings.from_config(tiny_config('mlm')).to_json())}
  current['config']['mlm']['sentence_task'] = 'sop'
  assert from_checkpoint_meta(current).sentence_head
  assert not from_checkpoint_meta({**current, 'classifier': {'task': 'sst2'}}).sentence_head
  # Written before grouped-query attention and rotary positions: the fields it lacks count with the values it
  # trained with (test_llama_model: such a checkpoint loads and resumes).
  before_llama = {'config': json.loads(PretrainSettings.from_config(tiny_config('clm')).to_json())}
  for name in ('num_kv_heads', 'head_dim', 'rope_theta'):
    del before_llama['config']['model'][name]
  cfg = from_checkpoint_meta(before_llama)
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 16, 1e4)
  check_resumable(PretrainSettings.from_config(tiny_config('clm')), before_llama, 'ckpt')
  with pytest.raises(ConfigError, match=r'^model\.num_kv_heads: 2 differs from 4 in the checkpoint at ckpt'):
    check_resumable(PretrainSettings.from_config(tiny_config('clm', num_kv_heads=2)), before_llama, 'ckpt')
  legacy['config']['model']['variant'] = 'llama'  # the code that wrote `variant` knew bert and gpt2 only
  with pytest.raises(ConfigError, match=r"^checkpoint: model\.variant 'llama' is not one of"):
    from_checkpoint_meta(legacy)


def _params(cfg: ModelConfig) -> dict:
  return flatten(nnx.to_pure_dict(nnx.state(LanguageModel(cfg, nnx.Rngs(0)), nnx.Param)))


def test_use_bias_false_leaves_no_bias_and_an_untied_head_has_its_own_trained_matrix():
  gpt2 = tiny_model_config('clm')
  assert any(k.endswith('bias') for k in _params(gpt2))
  assert not any(k.endswith('bias') for k in _params(dataclasses.replace(gpt2, use_bias=False)))
  untied = dataclasses.replace(gpt2, tie_embeddings=False)
  params = _params(untied)
  assert params['lm_head/kernel'].shape == (untied.hidden_size, untied.vocab_size)
  model = LanguageModel(untied, nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(0), (2, 8), 5, 512)
  grads = jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(tokens) ** 2))(state)
  lm_head_grad = grads['lm_head']['kernel'][...]
  assert float(jnp.abs(lm_head_grad).max()) > 0  # the output layer is this matrix, not the embedding
