"""tools.convert_checkpoint for Llama against real transformers models (LlamaForCausalLM,
LlamaForSequenceClassification): parity both ways with grouped-query attention and an untied head, the mapping
mistakes parity catches, bitwise round trips, sharded safetensors, a tied head, greedy generation, fine-tuning, and
the config.json settings we do not compute.

Weights are trained: hf_fixtures.llama_dir trains a transformers Llama 300 AdamW steps at lr 3e-2 on Python source
(logits std ~2.3), our llama pretrains 30 steps at lr 3e-2 (checkpoint_fixtures.TRAINED). Our float32 logits are
compared with transformers' in float64 (hf_fixtures.near_exact; the measured gaps are in TOLERANCE's comment); each
mistake below moves the logits by 0.04 to 3.5.
"""
import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from configs import finetune_glue
from finetune import train as finetune_train
from pretrain.data.hf_tokenizer import HfTokenizer
from pretrain.model import hf_config
from pretrain.model import load as model_load
from pretrain.runtime.errors import ConfigError
from tests.checkpoint_fixtures import TRAINED
from tests.glue_fixtures import write_task
from tests.hf_fixtures import (TEXTS, TOLERANCE, float64_gaps, hf_logits, llama_dir, logits_of, near_exact, padded,
                               stdlib_text)
from tools import generate
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib
from tools.convert_checkpoint import importer

LLAMA_STEPS = 300
B = 'encoder/blocks/'


@pytest.fixture(scope='session')
def hf_llama(tmp_path_factory):
  """A trained transformers Llama directory: GQA (4 heads, 2 kv heads), untied, byte-level BPE tokenizer.json."""
  return llama_dir(tmp_path_factory.mktemp('llama') / 'hf', LLAMA_STEPS)


@pytest.fixture(scope='session')
def imported(hf_llama, tmp_path_factory):
  out = tmp_path_factory.mktemp('llama_imported') / 'ours'
  importer.import_hf(str(hf_llama), str(out))
  return out


@pytest.fixture(scope='session')
def ours_llama(checkpoints):
  """Our own llama, pretrained by the real trainer (tiny_config('llama'): SentencePiece, GQA, untied head)."""
  return checkpoints.trained('llama')


def gaps(loaded, model, texts):
  """hf_fixtures.float64_gaps on random tokens and on the texts, tokenized by our tokenizer (right-padded)."""
  tok = loaded.tokenizer
  ids = np.random.default_rng(0).integers(0, tok.vocab_size, (2, 48))
  random = float64_gaps(logits_of(loaded, ids), model, ids)
  ids, real = padded([[tok.cls_id, *tok.encode(t)] for t in texts], tok.sep_id)
  return random, float64_gaps(logits_of(loaded, ids, segment_ids=real), model, ids, real == 1, attention_mask=real)


def test_import_matches_transformers_on_random_and_real_tokens(hf_llama, imported, tmp_path, capsys):
  assert convert_checkpoint.main(['from-hf', '--hf', str(hf_llama), '--out', str(tmp_path / 'ours'), '--verify']) == 0
  assert 'LlamaForCausalLM logits match transformers within' in capsys.readouterr().out
  loaded = model_load.load_checkpoint(str(imported))
  cfg = loaded.model_cfg
  assert (cfg.num_heads, cfg.num_kv_heads, cfg.tie_embeddings, cfg.layer_norm_eps) == (4, 2, False, 1e-5)
  model = transformers.LlamaForCausalLM.from_pretrained(hf_llama).eval()
  texts = TEXTS + [stdlib_text()[:120]]  # ~80 tokens, within max_position_embeddings 128
  random, real = gaps(loaded, model, texts)
  assert near_exact(random) and near_exact(real), (random, real)
  reference, tok = transformers.AutoTokenizer.from_pretrained(hf_llama), loaded.tokenizer
  assert (tok.cls_id, tok.sep_id) == (0, 1)  # config.json's bos_token_id / eos_token_id
  for text in texts:
    assert reference(text)['input_ids'] == [tok.cls_id, *tok.encode(text)]
    assert tok.decode(tok.encode(text)) == text


def test_export_of_our_pretrained_llama_matches_transformers(ours_llama, tmp_path, capsys):
  args = ['to-hf', '--checkpoint', str(ours_llama), '--out', str(tmp_path / 'hf'), '--verify']
  assert convert_checkpoint.main(args) == 0
  assert 'LlamaForCausalLM logits match transformers within' in capsys.readouterr().out
  model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is transformers.LlamaForCausalLM
  assert (model.config.num_key_value_heads, model.config.tie_word_embeddings) == (2, False)
  loaded = model_load.load_checkpoint(str(ours_llama))
  random, real = gaps(loaded, model, TEXTS)
  assert near_exact(random) and near_exact(real), (random, real)
  reference, tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf'), loaded.tokenizer
  for text in TEXTS:  # our SentencePiece model as tokenizer.json; BOS first, as LlamaTokenizerFast adds it
    assert reference(text)['input_ids'] == [tok.cls_id, *tok.encode(text)]
    assert reference.decode(tok.encode(text)) == text


def _heads_permuted(flat, names, axis, perm):
  """flat with the kernels `names` taken in the order perm along axis (heads, or head width)."""
  kernels = {B + f'attention/{name}/kernel' for name in names}
  return {k: np.take(v, perm, axis) if k in kernels else v for k, v in flat.items()}


def _tile_grouping(flat, n, kv):
  """Query head i reading kv head i % kv (a tile) instead of i // groups (repeat_kv): HF's head i moved to our
  position (i % kv) * groups + i // kv, its output rows with it."""
  perm = np.argsort([(i % kv) * (n // kv) + i // kv for i in range(n)])
  return _heads_permuted(_heads_permuted(flat, ['query'], 2, perm), ['out'], 1, perm)


# mistake -> (cfg, flat params) -> the mistaken (cfg, flat params).
MISTAKES = {
    # Interleaved (Meta) RoPE where rotate-half belongs: the same as q/k weights in the other head-width order,
    # the permutation transformers' Meta -> HF conversion applies.
    'interleaved_rope': lambda cfg, f: (cfg, _heads_permuted(f, ['query', 'key'], 3,
                                                             np.r_[0:cfg.head_dim:2, 1:cfg.head_dim:2])),
    'gate_up_swapped': lambda cfg, f: (cfg, {**f, B + 'mlp/wi_gate/kernel': f[B + 'mlp/wi_up/kernel'],
                                              B + 'mlp/wi_up/kernel': f[B + 'mlp/wi_gate/kernel']}),
    'kv_heads_swapped': lambda cfg, f: (cfg, _heads_permuted(f, ['key', 'value'], 2, [1, 0])),
    'kv_tile_grouping': lambda cfg, f: (cfg, _tile_grouping(f, cfg.num_heads, cfg.num_kv_heads)),
    'eps_not_read': lambda cfg, f: (dataclasses.replace(cfg, layer_norm_eps=1e-6), f),  # LlamaConfig's default
    'eps_ignored': lambda cfg, f: (dataclasses.replace(cfg, layer_norm_eps=1e-30), f),
}


@pytest.mark.parametrize('mistake', list(MISTAKES))
def test_parity_catches_the_mapping_mistake(hf_llama, imported, mistake):
  """On the trained import, each mistake is off transformers' logits by far more than the tolerance (measured:
  interleaved rope 2.5, gate/up swapped 1.7, kv heads swapped 3.5, tile grouping 2.8, eps 1e-6 for the file's
  1e-5 0.039, no eps 0.044), while the right mapping is within it."""
  loaded = model_load.load_checkpoint(str(imported))
  model = transformers.LlamaForCausalLM.from_pretrained(hf_llama).eval()
  ids = np.random.default_rng(0).integers(0, loaded.tokenizer.vocab_size, (2, 48))
  theirs = hf_logits(model, ids)
  flat = {k: np.asarray(v) for k, v in model_load.flatten(loaded.params).items()}
  assert near_exact(float64_gaps(logits_of(loaded, ids, flat=flat), model, ids))
  cfg, wrong = MISTAKES[mistake](loaded.model_cfg, flat)
  assert np.abs(logits_of(loaded, ids, cfg, wrong) - theirs).max() > 100 * TOLERANCE


def _same_params(a, b):
  flat_a, flat_b = model_load.flatten(a.params), model_load.flatten(b.params)
  assert flat_a.keys() == flat_b.keys()
  for name in flat_a:
    assert np.array_equal(np.asarray(flat_a[name]), np.asarray(flat_b[name])), name


def _same_tensors(hf_dir, exported_dir) -> dict:
  """Asserts the exported model.safetensors holds the original's tensors bit for bit; returns the original's."""
  original, back = load_file(hf_dir / 'model.safetensors'), load_file(exported_dir / 'model.safetensors')
  assert original.keys() == back.keys()
  for name in original:
    assert np.array_equal(original[name], back[name]), name
  return original


def test_round_trip_ours_hf_ours_is_bitwise_identical(ours_llama, tmp_path):
  export_lib.export(str(ours_llama), str(tmp_path / 'hf'))
  assert (tmp_path / 'hf' / 'tokenizer.model').is_file()  # our SentencePiece model travels as it is
  importer.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  before, after = model_load.load_checkpoint(str(ours_llama)), model_load.load_checkpoint(str(tmp_path / 'back'))
  _same_params(before, after)
  assert after.tokenizer.to_bytes() == before.tokenizer.to_bytes()
  assert after.model_cfg.architecture() == before.model_cfg.architecture()
  assert after.meta['imported_from']['freshly_initialised'] == []


def test_transformers_llama_imports_generates_greedily_like_transformers_and_exports_back(
    hf_llama, imported, tmp_path, monkeypatch, capsys):
  assert not (hf_llama / 'tokenizer.model').exists()
  prompt = 'def encode(self, o):'
  decoded = []
  decode = HfTokenizer.decode
  monkeypatch.setattr(HfTokenizer, 'decode', lambda self, ids: decoded.append(list(ids)) or decode(self, ids))
  assert generate.main(['--checkpoint', str(imported), '--prompt', prompt, '--no_bos', '--max_new_tokens', '12']) == 0
  text = capsys.readouterr().out.rstrip('\n')
  model = transformers.LlamaForCausalLM.from_pretrained(hf_llama).eval()
  reference = transformers.AutoTokenizer.from_pretrained(hf_llama)
  prompt_ids = reference(prompt, add_special_tokens=False)['input_ids']
  with torch.no_grad():
    theirs = model.generate(torch.tensor([prompt_ids]), max_new_tokens=12, do_sample=False,
                            pad_token_id=model.config.eos_token_id)[0].tolist()
  assert len(theirs) > len(prompt_ids) + 1
  assert decoded[-1] == theirs  # the prompt and every new token, EOS included when it came
  assert text == reference.decode(theirs, skip_special_tokens=True)

  export_lib.export(str(imported), str(tmp_path / 'back'))
  _same_tensors(hf_llama, tmp_path / 'back')


def test_sharded_export_loads_in_transformers_and_imports_back_bitwise(imported, tmp_path, capsys):
  args = ['to-hf', '--checkpoint', str(imported), '--out', str(tmp_path / 'hf'), '--max_shard_size', '100KB']
  assert convert_checkpoint.main(args) == 0
  assert ' shards, from ' in capsys.readouterr().out
  index = json.loads((tmp_path / 'hf' / 'model.safetensors.index.json').read_text())
  files = sorted(set(index['weight_map'].values()))
  assert len(files) > 2 and files[0] == f'model-00001-of-{len(files):05d}.safetensors'
  assert not (tmp_path / 'hf' / 'model.safetensors').exists()
  tensors = {k: v for f in files for k, v in load_file(tmp_path / 'hf' / f).items()}
  assert index['metadata']['total_size'] == sum(v.nbytes for v in tensors.values())
  assert sorted(index['weight_map']) == sorted(tensors)
  model = transformers.LlamaForCausalLM.from_pretrained(tmp_path / 'hf').eval()
  loaded = model_load.load_checkpoint(str(imported))
  ids = np.random.default_rng(1).integers(0, loaded.tokenizer.vocab_size, (2, 32))
  assert near_exact(float64_gaps(logits_of(loaded, ids), model, ids))
  importer.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  _same_params(loaded, model_load.load_checkpoint(str(tmp_path / 'back')))


def test_tied_llama_imports_and_exports(tmp_path):
  """tie_word_embeddings true (no lm_head.weight stored), a head_dim of its own (32, not 64 / 4), eos ids as a
  list; a stored lm_head.weight that is not the embedding is an error."""
  hf_dir = llama_dir(tmp_path / 'hf', LLAMA_STEPS, tie_word_embeddings=True, head_dim=32, eos_token_id=[1, 0])
  assert 'lm_head.weight' not in load_file(hf_dir / 'model.safetensors')
  importer.import_hf(str(hf_dir), str(tmp_path / 'ours'))
  loaded = model_load.load_checkpoint(str(tmp_path / 'ours'))
  cfg = loaded.model_cfg
  assert (cfg.tie_embeddings, cfg.head_dim, loaded.tokenizer.sep_id) == (True, 32, 1)
  assert 'lm_head' not in loaded.params
  model = transformers.LlamaForCausalLM.from_pretrained(hf_dir).eval()
  assert all(near_exact(gap) for gap in gaps(loaded, model, TEXTS))
  summary = export_lib.export(str(tmp_path / 'ours'), str(tmp_path / 'back'))
  assert summary['architecture'] == 'LlamaForCausalLM'
  assert json.loads((tmp_path / 'back' / 'config.json').read_text())['tie_word_embeddings'] is True
  original = _same_tensors(hf_dir, tmp_path / 'back')

  tensors = dict(original, **{'lm_head.weight': original['model.embed_tokens.weight'] + 1})
  save_file(tensors, hf_dir / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ConfigError, match=r'tensor lm_head\.weight differs from model\.embed_tokens\.weight; '
                                        r'config\.json ties them \(tie_word_embeddings true\)'):
    importer.import_hf(str(hf_dir), str(tmp_path / 'bad'))


ROPE_SCALINGS = [{'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                  'original_max_position_embeddings': 8192}, {'type': 'linear', 'factor': 2.0},
                 {'rope_type': 'dynamic', 'factor': 2.0}, {'rope_type': 'yarn', 'factor': 4.0}]


@pytest.mark.parametrize('field,value', [('rope_scaling', s) for s in ROPE_SCALINGS] + [
    ('hidden_act', 'gelu'), ('attention_bias', True), ('mlp_bias', True), ('pretraining_tp', 2)])
def test_unsupported_config_is_one_error_naming_the_field_and_writes_nothing(hf_llama, tmp_path, field, value):
  hf_dir = shutil.copytree(hf_llama, tmp_path / 'hf')
  config = json.loads((hf_dir / 'config.json').read_text())
  (hf_dir / 'config.json').write_text(json.dumps({**config, field: value}))
  with pytest.raises(ConfigError) as error:
    importer.import_hf(str(hf_dir), str(tmp_path / 'out'))
  assert str(error.value).startswith(f'{hf_dir / "config.json"}: {field} {value!r} is not supported (only ')
  if field == 'rope_scaling':
    assert str(error.value).endswith('(only plain rotary positions)')
  assert not (tmp_path / 'out').exists()


def test_config_json_fields_map_exactly():
  minimal = {'model_type': 'llama', 'vocab_size': 100, 'hidden_size': 64, 'num_hidden_layers': 2,
             'num_attention_heads': 4, 'intermediate_size': 96}
  cfg = hf_config.from_hf_config(minimal, 'config.json')  # absent fields: LlamaConfig's defaults
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.layer_norm_eps, cfg.tie_embeddings) == \
      (4, 16, 10000.0, 1e-6, False)
  full = {**minimal, 'num_key_value_heads': 1, 'head_dim': 8, 'rope_theta': 5e5, 'rms_norm_eps': 1e-5,
          'tie_word_embeddings': True, 'max_position_embeddings': 256}
  cfg = hf_config.from_hf_config(full, 'config.json')
  assert (cfg.num_kv_heads, cfg.head_dim, cfg.rope_theta, cfg.layer_norm_eps, cfg.tie_embeddings) == \
      (1, 8, 5e5, 1e-5, True)
  written = hf_config.to_hf_config(cfg, 'LlamaForCausalLM', pad_id=3, cls_id=1, sep_id=2)
  reference = transformers.LlamaConfig(**written)  # what transformers makes of what we write
  for key, value in {**full, 'bos_token_id': 1, 'eos_token_id': 2, 'pad_token_id': 3, 'hidden_act': 'silu'}.items():
    assert getattr(reference, key) == value, key
  assert hf_config.from_hf_config(written, 'config.json') == cfg
  assert export_lib.parse_size('5GB') == 5 * 10**9 and export_lib.parse_size('2GiB') == 2 * 2**30
  with pytest.raises(ConfigError, match=r"^--max_shard_size: '5XB' is not a size like 5GB"):
    export_lib.parse_size('5XB')


@pytest.mark.parametrize('task', ['sst2', 'stsb'])
def test_finetuned_llama_exports_as_sequence_classification(imported, tmp_path, capsys, task):
  write_task(tmp_path / 'glue', task, rows=48)
  config = finetune_glue.get_config(f'task={task}')
  config.init_checkpoint, config.data.source = str(imported), f'glue_dir:{tmp_path / "glue"}'
  config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 1
  config.train.learning_rate, config.data.max_length, config.model.dropout_rate = TRAINED['learning_rate'], 32, 0.0
  results = finetune_train.run(config, str(tmp_path / 'run'))
  args = ['to-hf', '--checkpoint', str(tmp_path / 'run'), '--out', str(tmp_path / 'hf'), '--verify']
  assert convert_checkpoint.main(args) == 0
  assert 'LlamaForSequenceClassification logits match transformers within' in capsys.readouterr().out
  model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is transformers.LlamaForSequenceClassification and model.score.bias is None
  loaded = model_load.load_checkpoint(results['checkpoint'])
  tok = loaded.tokenizer
  # No pad token: ours pads with EOS, which ends every example; transformers gets the BOS as its padding id.
  assert (tok.pad_id, model.config.pad_token_id) == (tok.sep_id, tok.cls_id)
  assert transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf').pad_token_id == tok.cls_id
  if task == 'stsb':
    assert (model.config.num_labels, model.config.problem_type) == (1, 'regression')
  else:
    assert model.config.id2label == {0: '0', 1: '1'} and model.config.problem_type == 'single_label_classification'
  rows = [[tok.cls_id, *tok.encode(text), tok.sep_id] for text in ('a red cat sat', 'the dog', TEXTS[0])]
  ids, real = padded(rows, model.config.pad_token_id)
  ours_bc = np.asarray(loaded.build()(jnp.asarray(ids), jnp.zeros_like(jnp.asarray(ids)), jnp.asarray(real)))
  assert np.abs(ours_bc - hf_logits(model, ids, attention_mask=real)).max() <= TOLERANCE
  model.config.pad_token_id = tok.sep_id  # what EOS as the padding id would give: the token before the EOS
  assert np.abs(ours_bc - hf_logits(model, np.where(real == 1, ids, tok.sep_id))).max() > 100 * TOLERANCE
