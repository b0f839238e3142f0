"""tools.convert_checkpoint and tools.fill_mask for ModernBERT against real transformers models
(ModernBertForMaskedLM, ModernBertForSequenceClassification): parity both ways on sequences longer than the local
window, padded and packed; the mistakes parity catches (window size, local rotary base, ...); round trips to the same
tensors; the fine-tuned classifier with mean and cls pooling; fill-mask as transformers' pipeline; config.json fields.

Weights are trained: hf_fixtures.modernbert_dir trains a transformers ModernBERT (4 layers: 0 and 3 global, 1 and 2
local, window 32) 300 masked-LM AdamW steps at lr 1e-2 on 64-token rows of Python source (logits up to ~6);
our modernbert pretrains 30 steps at lr 3e-2 (checkpoint_fixtures.TRAINED; tiny_config: layer 0 global, 1 local,
window 16). Measured max |logit difference| (float32) in each test's docstring.
"""
import dataclasses
import json
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from configs import finetune_glue
from finetune import train as finetune_train
from pretrain.model import hf_config
from pretrain.model import load as model_load
from pretrain.runtime.errors import ConfigError
from tests.checkpoint_fixtures import TRAINED
from tests.glue_fixtures import write_task
from tests.hf_fixtures import TEXTS, TOLERANCE, hf_logits, logits_of, modernbert_dir, padded, stdlib_text
from tools import fill_mask
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib
from tools.convert_checkpoint import importer

MODERNBERT_STEPS = 300
LENGTH = 100  # random-token rows: longer than the local windows (32 imported, 16 ours) and their halves
B = 'encoder/blocks/'


@pytest.fixture(scope='session')
def hf_modernbert(tmp_path_factory):
  return modernbert_dir(tmp_path_factory.mktemp('modernbert') / 'hf', MODERNBERT_STEPS)


@pytest.fixture(scope='session')
def imported(hf_modernbert, tmp_path_factory):
  out = tmp_path_factory.mktemp('modernbert_imported') / 'ours'
  importer.import_hf(str(hf_modernbert), str(out))
  return out


@pytest.fixture(scope='session')
def ours_modernbert(checkpoints):
  """Our own modernbert, pretrained by the real trainer (tiny_config('modernbert'): SentencePiece, window 16)."""
  return checkpoints.trained('modernbert')


def _docs(loaded, length: int) -> list[list[int]]:
  """[CLS] text [SEP] rows of our tokenizer: the TEXTS and stdlib text, each longer than the local window."""
  tok = loaded.tokenizer
  texts = TEXTS + [stdlib_text()[:length]]
  return [[tok.cls_id, *tok.encode(t), tok.sep_id] for t in texts]


def max_diffs(loaded, model, length: int = 160) -> dict[str, float]:
  """max |ours - transformers| on random tokens, on right-padded documents (attention_mask; real tokens only) and
  on the same documents packed into one row (segment ids, per-document positions) against transformers on each
  document alone."""
  tok = loaded.tokenizer
  ids = np.random.default_rng(0).integers(0, tok.vocab_size, (2, min(LENGTH, loaded.model_cfg.max_position_embeddings)))
  diffs = {'random': np.abs(logits_of(loaded, ids) - hf_logits(model, ids)).max()}
  docs = _docs(loaded, length)
  ids, real = padded(docs, tok.pad_id)
  diff = np.abs(logits_of(loaded, ids, segment_ids=real) - hf_logits(model, ids, attention_mask=real))
  diffs['padded'] = diff[real == 1].max()
  packed = np.array([sum(docs, [])])
  segments = np.array([[n + 1 for n, d in enumerate(docs) for _ in d]])
  positions = np.array([[i for d in docs for i in range(len(d))]])
  ours = logits_of(loaded, packed, segment_ids=segments, positions=positions)[0]
  theirs = np.concatenate([hf_logits(model, np.array([d]))[0] for d in docs])
  diffs['packed'] = np.abs(ours - theirs).max()
  return {k: float(v) for k, v in diffs.items()}


def test_import_matches_transformers_padded_and_packed(hf_modernbert, imported, tmp_path, capsys):
  """Measured: random 2.9e-6, padded 2.4e-6, packed 2.4e-6 (logits up to ~6.3; 100 random tokens, documents up to
  ~120 tokens, window 32). transformers' own float32 run is 2.8e-6 to 4.2e-6 from its float64 one."""
  args = ['from-hf', '--hf', str(hf_modernbert), '--out', str(tmp_path / 'ours'), '--verify']
  assert convert_checkpoint.main(args) == 0
  assert 'ModernBertForMaskedLM logits match transformers within' in capsys.readouterr().out
  loaded = model_load.load_checkpoint(str(imported))
  cfg = loaded.model_cfg
  assert (cfg.local_window, cfg.global_every, cfg.rope_theta, cfg.local_rope_theta, cfg.layer_norm_eps) == \
      (32, 3, 160000.0, 10000.0, 1e-5)
  assert (cfg.num_layers, cfg.vocab_size, loaded.tokenizer.vocab_size) == (4, 448, 405)
  assert loaded.meta['imported_from']['freshly_initialised'] == []
  layer0_norm = np.asarray(loaded.params['encoder']['blocks']['attention_norm']['scale'])[0]
  assert np.array_equal(layer0_norm, np.ones_like(layer0_norm))  # HF's Identity: the unused scale is ones
  model = transformers.ModernBertForMaskedLM.from_pretrained(hf_modernbert).eval()
  diffs = max_diffs(loaded, model)
  assert max(diffs.values()) <= TOLERANCE, diffs
  reference, tok = transformers.AutoTokenizer.from_pretrained(hf_modernbert), loaded.tokenizer
  config = json.loads((hf_modernbert / 'config.json').read_text())
  assert (tok.cls_id, tok.sep_id, tok.pad_id) == (config['cls_token_id'], config['sep_token_id'],
                                                  config['pad_token_id'])
  assert (tok.mask_id, tok.unk_id) == (reference.mask_token_id, reference.unk_token_id)
  for text in TEXTS + [stdlib_text()[:160]]:
    assert reference(text)['input_ids'] == [tok.cls_id, *tok.encode(text), tok.sep_id]
    assert tok.decode(tok.encode(text)) == text


def test_export_of_our_pretrained_modernbert_matches_transformers(ours_modernbert, tmp_path, capsys):
  """Measured: random 3.3e-6, padded 2.4e-6, packed 2.9e-6 (64 random tokens, documents up to ~60 tokens; our
  window 16)."""
  args = ['to-hf', '--checkpoint', str(ours_modernbert), '--out', str(tmp_path / 'hf'), '--verify']
  assert convert_checkpoint.main(args) == 0
  assert 'ModernBertForMaskedLM logits match transformers within' in capsys.readouterr().out
  model = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is transformers.ModernBertForMaskedLM
  loaded = model_load.load_checkpoint(str(ours_modernbert))
  assert (model.config.local_attention, model.config.global_attn_every_n_layers) == (16, 3)
  assert model.config.classifier_pooling == 'mean'
  diffs = max_diffs(loaded, model, length=loaded.model_cfg.max_position_embeddings - 2)
  assert max(diffs.values()) <= TOLERANCE, diffs
  reference, tok = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf'), loaded.tokenizer
  for text in TEXTS:  # our SentencePiece model as tokenizer.json, [CLS] text [SEP] as our documents
    assert reference(text)['input_ids'] == [tok.cls_id, *tok.encode(text), tok.sep_id]
    assert reference.decode(tok.encode(text)) == text


def _swap_gate_up(f):
  return {**f, B + 'mlp/wi_gate/kernel': f[B + 'mlp/wi_up/kernel'], B + 'mlp/wi_up/kernel': f[B + 'mlp/wi_gate/kernel']}


# mistake -> (cfg, flat params) -> the mistaken (cfg, flat params).
MISTAKES = {
    # HF's local_attention is the whole window (local_attention // 2 either side), not the width either side.
    'window_each_side': lambda cfg, f: (dataclasses.replace(cfg, local_window=2 * cfg.local_window), f),
    'no_local_window': lambda cfg, f: (dataclasses.replace(cfg, local_window=0), f),
    'local_rope_theta_ignored': lambda cfg, f: (dataclasses.replace(cfg, local_rope_theta=0.0), f),
    'global_every_2': lambda cfg, f: (dataclasses.replace(cfg, global_every=2), f),
    'gate_up_swapped': lambda cfg, f: (cfg, _swap_gate_up(f)),
    # a norm before layer 0's attention (HF: Identity): scale 1 and mean 0 on the embedding norm's output
    'layer0_attention_norm': lambda cfg, f: (dataclasses.replace(cfg, first_attention_norm=True), f),
}


@pytest.mark.parametrize('mistake', list(MISTAKES))
def test_parity_catches_the_mapping_mistake(hf_modernbert, imported, mistake):
  """On the trained import at sequence length 100, each mistake is off transformers' logits by far more than the
  tolerance (measured: a window of 64 for HF's local_attention 32 (32 either side, not 16) 9.8e-3, no window 1.0e-2,
  the global rotary base in the local layers 8.9e-3, global every 2nd layer 4.1e-3, gate/up swapped 8.3e-2, a norm
  before layer 0's attention 4.6e-3), while the right mapping is within it."""
  loaded = model_load.load_checkpoint(str(imported))
  model = transformers.ModernBertForMaskedLM.from_pretrained(hf_modernbert).eval()
  ids = np.random.default_rng(0).integers(0, loaded.tokenizer.vocab_size, (2, LENGTH))
  theirs = hf_logits(model, ids)
  flat = {k: np.asarray(v) for k, v in model_load.flatten(loaded.params).items()}
  assert np.abs(logits_of(loaded, ids, flat=flat) - theirs).max() <= TOLERANCE
  cfg, wrong = MISTAKES[mistake](loaded.model_cfg, flat)
  diff = np.abs(logits_of(loaded, ids, cfg, wrong) - theirs).max()
  assert diff > 100 * TOLERANCE


def test_round_trips_give_back_the_same_tensors(hf_modernbert, imported, ours_modernbert, tmp_path):
  """transformers' files -> ours -> HF: the same safetensors, config fields and tokenizer; ours -> HF -> ours: the
  same parameters bit for bit."""
  summary = export_lib.export(str(imported), str(tmp_path / 'back'))
  assert summary['architecture'] == 'ModernBertForMaskedLM'
  original, back = load_file(hf_modernbert / 'model.safetensors'), load_file(tmp_path / 'back' / 'model.safetensors')
  assert 'decoder.weight' not in original and 'model.layers.0.attn_norm.weight' not in original
  assert original.keys() == back.keys()
  for name in original:
    assert np.array_equal(original[name], back[name]), name
  config, written = (transformers.ModernBertConfig.from_pretrained(d).to_dict() for d in (hf_modernbert,
                                                                                         tmp_path / 'back'))
  skip = ('transformers_version', '_name_or_path', 'dtype', 'torch_dtype')
  assert {k: v for k, v in config.items() if k not in skip} == {k: v for k, v in written.items() if k not in skip}
  assert json.loads((tmp_path / 'back' / 'tokenizer.json').read_text()) == \
      json.loads((hf_modernbert / 'tokenizer.json').read_text())

  export_lib.export(str(ours_modernbert), str(tmp_path / 'hf'))
  importer.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'ours'))
  before, after = model_load.load_checkpoint(str(ours_modernbert)), model_load.load_checkpoint(str(tmp_path / 'ours'))
  flat_before, flat_after = model_load.flatten(before.params), model_load.flatten(after.params)
  assert flat_before.keys() == flat_after.keys()
  for name in flat_before:  # layer 0's unused attention norm too: ones, untouched by training (no gradient)
    assert np.array_equal(np.asarray(flat_before[name]), np.asarray(flat_after[name])), name
  assert after.tokenizer.to_bytes() == before.tokenizer.to_bytes()
  assert after.model_cfg.architecture() == before.model_cfg.architecture()


@pytest.mark.parametrize('pooling', ['mean', 'cls'])
def test_finetuned_modernbert_exports_as_sequence_classification(imported, tmp_path, capsys, pooling):
  """Measured: logits (up to 0.59) within 1.5e-7 (mean) and 1.2e-7 (cls) of ModernBertForSequenceClassification
  on padded rows; the other pooling is off by 1.4e-2 / 1.0e-2."""
  write_task(tmp_path / 'glue', 'sst2', rows=48)
  config = finetune_glue.get_config('task=sst2')
  config.init_checkpoint, config.data.source = str(imported), f'glue_dir:{tmp_path / "glue"}'
  config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 1
  config.train.learning_rate, config.data.max_length, config.model.dropout_rate = TRAINED['learning_rate'], 32, 0.0
  config.pooling = pooling
  results = finetune_train.run(config, str(tmp_path / 'run'))
  args = ['to-hf', '--checkpoint', str(tmp_path / 'run'), '--out', str(tmp_path / 'hf'), '--verify']
  assert convert_checkpoint.main(args) == 0
  assert 'ModernBertForSequenceClassification logits match transformers within' in capsys.readouterr().out
  model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is transformers.ModernBertForSequenceClassification
  assert model.config.classifier_pooling == pooling and model.config.id2label == {0: '0', 1: '1'}
  loaded = model_load.load_checkpoint(results['checkpoint'])
  tok = loaded.tokenizer
  rows = [[tok.cls_id, *tok.encode(text), tok.sep_id] for text in ('a red cat sat', 'the dog', *TEXTS)]
  ids, real = padded(rows, tok.pad_id)
  ours_bc = np.asarray(loaded.build()(jnp.asarray(ids), jnp.zeros_like(jnp.asarray(ids)), jnp.asarray(real)))
  diff = np.abs(ours_bc - hf_logits(model, ids, attention_mask=real)).max()
  model.config.classifier_pooling = {'mean': 'cls', 'cls': 'mean'}[pooling]
  wrong = np.abs(ours_bc - hf_logits(model, ids, attention_mask=real)).max()
  assert diff <= TOLERANCE and wrong > 100 * TOLERANCE, (diff, wrong)


def test_fill_mask_on_an_imported_modernbert_matches_the_transformers_pipeline(hf_modernbert, imported, capsys):
  """The same ids as the pipeline (its [MASK] takes the space before it), top-5 ids and probabilities within 2e-4
  (the pipeline's softmax also spans the 43 padding rows of the vocabulary; over the tokenizer's ids: 1e-5)."""
  text = 'def dumps(obj, *, skipkeys=False, [MASK]=True, check_circular=True, allow_nan=[MASK],'
  assert fill_mask.main(['--checkpoint', str(imported), text]) == 0
  assert capsys.readouterr().out.count('[MASK] ') == 2
  loaded = model_load.load_checkpoint(str(imported))
  ours = fill_mask.fill_mask(loaded, text, top_k=5)
  ids, positions = fill_mask.token_ids(loaded.tokenizer, text)
  assert ids == transformers.AutoTokenizer.from_pretrained(hf_modernbert)(text)['input_ids']
  pipe = transformers.pipeline('fill-mask', model=str(hf_modernbert), top_k=5, device='cpu')
  theirs = pipe(text)
  model = pipe.model.eval()
  with torch.no_grad():
    probs_tv = torch.softmax(model(torch.tensor([ids])).logits[0, :, :loaded.tokenizer.vocab_size], -1).numpy()
  assert len(ours) == len(theirs) == 2
  for rows, reference, position in zip(ours, theirs, positions):
    assert [i for i, _, _ in rows] == [r['token'] for r in reference]
    np.testing.assert_allclose([p for _, _, p in rows], [r['score'] for r in reference], atol=2e-4)
    np.testing.assert_allclose([p for _, _, p in rows], probs_tv[position, [i for i, _, _ in rows]], atol=1e-5)


BAD_FIELDS = [('hidden_activation', 'gelu_new'), ('classifier_activation', 'silu'), ('attention_bias', True),
              ('mlp_bias', True), ('norm_bias', True), ('classifier_bias', True), ('decoder_bias', False),
              ('tie_word_embeddings', False), ('rope_scaling', {'rope_type': 'yarn', 'factor': 4.0}),
              ('rope_parameters', {'full_attention': {'rope_type': 'linear', 'factor': 2.0}})]


@pytest.mark.parametrize('field,value', BAD_FIELDS)
def test_unsupported_config_is_one_error_naming_the_field_and_writes_nothing(hf_modernbert, tmp_path, field, value):
  hf_dir = shutil.copytree(hf_modernbert, tmp_path / 'hf')
  config = json.loads((hf_dir / 'config.json').read_text())
  (hf_dir / 'config.json').write_text(json.dumps({**config, field: value}))
  with pytest.raises(ConfigError) as error:
    importer.import_hf(str(hf_dir), str(tmp_path / 'out'))
  assert str(error.value).startswith(f'{hf_dir / "config.json"}: {field} {value!r} is not supported (only ')
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'out').exists()


def test_config_json_fields_map_exactly():
  minimal = {'model_type': 'modernbert', 'vocab_size': 100, 'hidden_size': 64, 'num_hidden_layers': 4,
             'num_attention_heads': 4, 'intermediate_size': 96}
  cfg = hf_config.from_hf_config(minimal, 'config.json')  # absent fields: ModernBertConfig's defaults
  reference = transformers.ModernBertConfig(**minimal)
  assert (cfg.max_position_embeddings, cfg.layer_norm_eps, cfg.rope_theta, cfg.local_rope_theta, cfg.local_window,
          cfg.global_every) == (reference.max_position_embeddings, reference.norm_eps, reference.global_rope_theta,
                                reference.local_rope_theta, reference.local_attention,
                                reference.global_attn_every_n_layers)
  full = {**minimal, 'max_position_embeddings': 256, 'norm_eps': 1e-6, 'global_rope_theta': 5e4,
          'local_rope_theta': 2e3, 'local_attention': 32, 'global_attn_every_n_layers': 2}
  cfg = hf_config.from_hf_config(full, 'config.json')
  assert (cfg.max_position_embeddings, cfg.layer_norm_eps, cfg.rope_theta, cfg.local_rope_theta, cfg.local_window,
          cfg.global_every, cfg.mlp_dim) == (256, 1e-6, 5e4, 2e3, 32, 2, 96)
  written = hf_config.to_hf_config(cfg, 'ModernBertForMaskedLM', pad_id=3, cls_id=1, sep_id=2, pooling='cls')
  reference = transformers.ModernBertConfig(**written)  # what transformers makes of what we write
  ids = {'pad_token_id': 3, 'bos_token_id': 1, 'eos_token_id': 2, 'cls_token_id': 1, 'sep_token_id': 2}
  for key, value in {**full, **ids, 'classifier_pooling': 'cls', 'hidden_activation': 'gelu'}.items():
    assert getattr(reference, key) == value, key
  assert hf_config.from_hf_config(written, 'config.json') == cfg
  no_local = hf_config.from_hf_config({**full, 'local_rope_theta': None}, 'config.json')
  assert no_local.layer_rope_theta(False) == no_local.rope_theta == 5e4  # None: the global base
