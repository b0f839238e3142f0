"""The llama fields at the model level: rotary positions per packed document, grouped-query attention, RMSNorm in
float32, kv heads on a tensor axis that does not divide them, the new fields' errors, checkpoints written before
the fields, and the llama config files (sizes, the 1B job)."""
import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from configs import jobs, llama_1b_wiki, pretrain_clm, pretrain_llama, pretrain_mlm
from pretrain import train
from pretrain.data.packing import CONT, PAD, START, features
from pretrain.model import presets
from pretrain.model.attention_kernels import xla_attention
from pretrain.model.heads import LanguageModel
from pretrain.model.layers import RMSNorm
from pretrain.model.load import load_checkpoint
from pretrain.optim import learning_rate_schedule
from pretrain.runtime import sharding
from pretrain.runtime.errors import ConfigError
from pretrain.settings import PretrainSettings, check_batch_split
from pretrain.trainer import make_trainer
from tests.checkpoint_fixtures import TRAINED, pretrain_config
from tests.helpers import rejected_before_compiling, tiny_config, tiny_model_config

# The fields a checkpoint written before grouped-query attention and rotary positions lacks.
NEW_FIELDS = ('num_kv_heads', 'head_dim', 'rope_theta')


def _llama(**overrides) -> LanguageModel:
  return LanguageModel(tiny_model_config('llama', **overrides), nnx.Rngs(0))


def _tokens(shape=(2, 16), seed=0):
  return jax.random.randint(jax.random.key(seed), shape, 5, 512)


def test_a_packed_document_with_the_pipelines_positions_has_its_logits_alone():
  """Rotary attention reads each token's position within its document, as the data pipeline makes them (they
  restart at 0 for each document): the second document of a packed row has the logits it has alone."""
  model = _llama()
  kind = np.array([[START] + [CONT] * 5 + [START] + [CONT] * 6 + [PAD] * 3])  # documents of 6 and 7 tokens
  row = features(np.asarray(_tokens((1, 16))), kind)
  assert row['positions'][0, 6:13].tolist() == list(range(7)) and set(row['segment_ids'][0, 6:13]) == {2}
  second = row['tokens'][:, 6:13]
  alone = model(second)
  packed = model(row['tokens'], segment_ids=row['segment_ids'], positions=row['positions'])
  np.testing.assert_allclose(packed[:, 6:13], alone, atol=1e-5)
  # Rotary attention depends on distances only: a document at positions 100... gives the same logits. Rotating
  # q alone (or q and k differently) would break this; spacing the positions out changes the distances and the
  # logits; without its segment ids the packed document attends to the first one.
  np.testing.assert_allclose(model(second, positions=100 + jnp.arange(7)[None]), alone, atol=1e-4)
  assert not np.allclose(model(second, positions=2 * jnp.arange(7)[None]), alone, atol=1e-3)
  assert not np.allclose(model(row['tokens'], positions=row['positions'])[:, 6:13], alone, atol=1e-3)


def _multi_head_params(gqa: LanguageModel, groups: int, repeat) -> dict:
  """The GQA model's parameters with each key/value head's kernel given to every query head of its group."""
  params = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
  attention = params['encoder']['blocks']['attention']
  for name in ('key', 'value'):
    attention[name]['kernel'] = repeat(attention[name]['kernel'], groups)  # [layers, embed, kv_heads, head_dim]
  return params


REPEAT = lambda kernel, groups: jnp.repeat(kernel, groups, axis=2)  # heads 0 0 1 1: query head i reads i // groups
TILE = lambda kernel, groups: jnp.tile(kernel, (1, 1, groups, 1))  # heads 0 1 0 1: the wrong grouping


@pytest.mark.parametrize('attention_dropout_rate', [0.0, 0.3])
def test_grouped_query_attention_is_multi_head_attention_with_shared_kv_heads(attention_dropout_rate):
  """4 query heads on 2 kv heads equal 4-head attention whose heads 0, 1 share kv head 0 and heads 2, 3 kv head 1,
  on the fused kernel (rate 0) and on the explicit softmax with attention dropout (rate 0.3, a dropout key)."""
  # Weights far from 0 (std 0.3), so attention is far from uniform and a wrong grouping shows.
  gqa_cfg = tiny_model_config('llama', initializer_range=0.3, dropout_rate=0.0,
                              attention_dropout_rate=attention_dropout_rate)
  assert (gqa_cfg.num_heads, gqa_cfg.num_kv_heads, gqa_cfg.kv_groups) == (4, 2, 2)
  gqa = LanguageModel(gqa_cfg, nnx.Rngs(0))
  mha_graphdef, _ = nnx.split(nnx.eval_shape(lambda: LanguageModel(dataclasses.replace(gqa_cfg, num_kv_heads=4),
                                                                   nnx.Rngs(0))))
  key, tokens = jax.random.key(3), _tokens()
  expected = gqa(tokens, dropout_key=key)
  same = nnx.merge(mha_graphdef, _multi_head_params(gqa, 2, REPEAT))(tokens, dropout_key=key)
  np.testing.assert_allclose(same, expected, atol=1e-5)
  wrong = nnx.merge(mha_graphdef, _multi_head_params(gqa, 2, TILE))(tokens, dropout_key=key)
  assert np.abs(wrong - expected).max() > 0.05
  assert np.allclose(gqa(tokens), expected) == (attention_dropout_rate == 0.0)  # dropout did drop


def test_the_dropout_path_of_xla_attention_is_the_fused_one_when_nothing_is_dropped():
  """With grouped kv heads and packed segments, the explicit softmax (taken for attention dropout) at a rate that
  keeps every probability equals jax.nn.dot_product_attention's; a real rate drops and rescales."""
  q_key, k_key, v_key, dropout_key = jax.random.split(jax.random.key(0), 4)
  q, k, v = (jax.random.normal(key, (2, 8, heads, 16)) for key, heads in ((q_key, 4), (k_key, 2), (v_key, 2)))
  segments = jnp.array([[1] * 5 + [2] * 3, [1] * 8])
  fused = xla_attention(q, k, v, segments, causal=True)
  kept = xla_attention(q, k, v, segments, causal=True, dropout_rate=1e-9, dropout_key=dropout_key)
  np.testing.assert_allclose(kept, fused, atol=1e-6)
  dropped = xla_attention(q, k, v, segments, causal=True, dropout_rate=0.5, dropout_key=dropout_key)
  assert not np.allclose(dropped, fused, atol=1e-2)


def test_rms_norm_computes_its_statistics_in_float32_under_bfloat16_compute():
  """The bfloat16 output is the float32 computation rounded once; statistics in bfloat16 differ."""
  cfg = tiny_model_config('llama', dtype='bfloat16')
  rms_norm = RMSNorm(cfg, nnx.Rngs(0))
  rms_norm.scale[...] = 1 + 0.1 * jax.random.normal(jax.random.key(1), (cfg.hidden_size,))
  x = (20 + 3 * jax.random.normal(jax.random.key(0), (8, cfg.hidden_size))).astype(jnp.bfloat16)
  y = rms_norm(x)
  assert y.dtype == jnp.bfloat16 and rms_norm.scale[...].dtype == jnp.float32
  x32, scale, eps = x.astype(jnp.float32), rms_norm.scale[...], cfg.layer_norm_eps
  expected = (x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), -1, keepdims=True) + eps) * scale).astype(jnp.bfloat16)
  np.testing.assert_array_equal(y, expected)
  in_bfloat16 = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), -1, keepdims=True) + eps) * scale.astype(jnp.bfloat16)
  assert not np.array_equal(in_bfloat16, expected)  # (measured: 43% of the values one bfloat16 step apart)


def _attention_shardings(config) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh_and_rules(mesh, config.sharding_rules):
    trainer = make_trainer(PretrainSettings.from_config(config), mesh)
  return {name: s['kernel'].spec for name, s in trainer.state_shardings['params']['encoder']['blocks']
          ['attention'].items()}


@pytest.mark.parametrize('tensor,kv_heads_axis', [(4, None), (2, 'tensor')])
def test_kv_heads_are_replicated_where_the_tensor_axis_does_not_divide_them(monkeypatch, tensor, kv_heads_axis):
  """2 kv heads on tensor 4: the key/value projections are whole on every device (tensor 2 splits them). The
  sharded training step on tensor 4 equals one device's: test_sharding::...[llama-tensor]."""
  config = tiny_config('llama')
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 8 // tensor, 1, tensor
  specs = _attention_shardings(config)
  assert specs['query'] == P(None, 'fsdp', 'tensor', None) and specs['out'] == P(None, 'tensor', None, 'fsdp')
  assert specs['key'] == specs['value'] == P(None, 'fsdp', kv_heads_axis, None)
  if tensor == 4:  # what the replication saves us from
    monkeypatch.setattr(sharding, 'REPLICATED_WHEN_INDIVISIBLE', ())
    with pytest.raises(ConfigError, match=r'attention/key/kernel dimension 2 is not divisible by mesh axes tensor'):
      _attention_shardings(config)


@pytest.mark.parametrize('overrides,match', [
    ({'num_kv_heads': 3}, r'^model\.num_kv_heads: 3 does not divide model\.num_heads 4$'),
    ({'head_dim': 15}, r'^model\.head_dim: rotary positions need an even head width, got 15$'),
    ({'head_dim': -16}, r'^model\.head_dim: must be positive \(0: hidden_size // num_heads\), got -16$'),
    ({'rope_theta': 0.0}, r'^model\.rope_theta: must be positive, got 0\.0$'),
])
def test_bad_llama_fields_are_one_error_naming_the_field_before_compiling(monkeypatch, tmp_path, overrides, match):
  rejected_before_compiling(monkeypatch, tiny_config('llama', **overrides), tmp_path / 'run', match)
  assert not (tmp_path / 'run').exists()  # nothing written


def test_a_checkpoint_written_before_the_new_fields_loads_and_resumes(checkpoints, tmp_path):
  """A gpt2 checkpoint whose meta predates num_kv_heads, head_dim and rope_theta: its architecture is the one it
  trained with (test_model_config::test_meta_of_any_version_... compares such meta with other configs)."""
  workdir = tmp_path / 'old'
  shutil.copytree(checkpoints.trained('clm'), workdir)  # shared with the conversion and tool tests
  for meta_file in workdir.glob('checkpoints/*/meta/metadata'):
    meta = json.loads(meta_file.read_text())
    for name in NEW_FIELDS:
      del meta['config']['model'][name]
    meta_file.write_text(json.dumps(meta))
  loaded = load_checkpoint(str(workdir))
  assert not set(NEW_FIELDS) & set(loaded.meta['config']['model'])
  cfg = loaded.model_cfg
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta) == (4, 16, 1e4) and presets.preset_of(cfg) == 'gpt2'
  assert np.isfinite(loaded.build()(_tokens())).all()
  config = pretrain_config('clm', **TRAINED)
  config.train.steps = TRAINED['steps'] + 1
  assert train.run(config, str(workdir))['step'] == TRAINED['steps'] + 1
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in lines if 'loss' in r] == list(range(1, TRAINED['steps'] + 2))  # the last one resumed
  assert set(NEW_FIELDS) <= set(load_checkpoint(str(workdir)).meta['config']['model'])  # written again in full


# Parameters of the reference models (Hugging Face's count): TinyLlama-1.1B and Meta-Llama-3-8B.
@pytest.mark.parametrize('size,kv_heads,rope_theta,params', [
    ('tiny', 2, 1e4, 7_244_032), ('llama-150m', 4, 1e4, 149_840_640), ('llama-1b', 4, 1e4, 1_100_048_384),
    ('llama-8b', 8, 5e5, 8_030_261_248)])
def test_llama_sizes_are_the_llama_preset_with_the_reference_models_shapes(size, kv_heads, rope_theta, params):
  model_cfg = PretrainSettings.from_config(pretrain_llama.get_config(f'size={size}')).model
  assert presets.preset_of(model_cfg) == 'llama' and not model_cfg.tie_embeddings
  assert (model_cfg.num_kv_heads, model_cfg.rope_theta) == (kv_heads, rope_theta)
  abstract = nnx.eval_shape(lambda: LanguageModel(model_cfg, nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == params


@pytest.mark.parametrize('module,size,choices', [
    (pretrain_llama, 'gpt2-small', 'tiny, llama-150m, llama-1b, llama-8b'),
    (pretrain_llama, 'bert-base', 'tiny, llama-150m, llama-1b, llama-8b'),
    (pretrain_clm, 'llama-1b', 'tiny, bert-base, bert-large, gpt2-small, gpt2-medium, gpt2-large, 1b'),
    (pretrain_mlm, 'llama-150m', 'tiny, bert-base, bert-large, gpt2-small, gpt2-medium, gpt2-large, 1b'),
])
def test_a_config_file_rejects_the_other_families_sizes(module, size, choices):
  with pytest.raises(ValueError, match=f"^config arg: unknown size '{size}'; choose one of {choices}$"):
    module.get_config(f'size={size}')


def test_the_llama_1b_job_builds_and_its_microbatches_fit_a_device():
  """TinyLlama's recipe on 16 GPUs: 1024 x 2048 tokens a step as 64 rows per device, in 8 microbatches of 8 rows
  (16,384 tokens, jobs.MAX_TOKENS_PER_DEVICE); about 20 tokens per parameter; lr 4e-4 -> 4e-5 (cosine)."""
  config = llama_1b_wiki.get_config('data=/d/wiki-2048-32k')
  settings = PretrainSettings.from_config(config)
  assert config.data.source == 'prepared:/d/wiki-2048-32k' and presets.preset_of(settings.model) == 'llama'
  assert (settings.model.num_layers, settings.model.hidden_size, settings.model.num_kv_heads) == (22, 2048, 4)
  devices = 16
  assert sharding.resolve_mesh_shape(config.mesh, devices) == (1, 16, 1)
  check_batch_split(settings, devices)
  assert settings.tokens_per_step == 1024 * 2048 and config.train.microbatches == 8
  assert config.train.batch_size // devices // config.train.microbatches * config.data.seq_len == \
      jobs.MAX_TOKENS_PER_DEVICE
  assert 20 < config.train.steps * settings.tokens_per_step / 1_100_048_384 < 22
  schedule = learning_rate_schedule(settings.train.optimizer)
  np.testing.assert_allclose([schedule(2000), schedule(11_000)], [4e-4, 4e-5], rtol=1e-5)
  assert settings.model.dtype == 'bfloat16' and settings.model.remat_policy == 'dots_with_no_batch_dims'
