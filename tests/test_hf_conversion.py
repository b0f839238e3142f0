"""tools.convert_checkpoint against real `transformers` PyTorch models: both directions, both architectures,
the sequence-classification export, the bitwise round trip, and bad input.

Parity is checked on trained weights (tests/checkpoint_fixtures.TRAINED, and transformers models trained the same
way), not only at the near-zero initialisation, where an erf GELU and a tanh one give the same logits to 1e-5:
test_parity_would_catch_a_swapped_gelu shows the tolerance tells them apart.
"""
import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from configs import finetune_glue
from finetune import train as finetune_train
from pretrain import train as pretrain_train
from pretrain.runtime.errors import ConfigError
from tests.checkpoint_fixtures import TRAINED
from tests.glue_fixtures import write_task
from tests.helpers import tiny_config
from pretrain.model import load as model_load
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib
from tools.convert_checkpoint import importer, verify

ROOT = pathlib.Path(__file__).resolve().parents[1]
# max |logit difference| in float32. Measured on trained weights: 3.3e-6 (export) and ~1e-6 (import); an erf GELU
# where a tanh one belongs (or the reverse) moves the logits by 7e-5 to 8e-5.
TOLERANCE = 1e-5
TEXTS = ['def f(x):\n    return x * 2  # double it', 'Héllo wörld ✓ 漢字 and\ttabs', 'The quick brown fox.']
HF_CLASSES = {'mlm': transformers.BertForMaskedLM, 'clm': transformers.GPT2LMHeadModel}


@pytest.fixture(scope='module')
def ours(checkpoints):
  """(objective, weights) -> a tiny pretraining workdir: weights 'init' (the random initialisation), 'trained'."""
  return lambda objective, weights: (checkpoints(objective, steps=0) if weights == 'init'
                                     else checkpoints.trained(objective))


def _our_logits(checkpoint, ids, **kwargs):
  loaded = model_load.load_checkpoint(str(checkpoint))
  return np.asarray(loaded.build()(jnp.asarray(ids), **{k: jnp.asarray(v) for k, v in kwargs.items()}))


def _hf_logits(model, ids, **kwargs):
  with torch.no_grad():
    return model(torch.tensor(ids), **{k: torch.tensor(v) for k, v in kwargs.items()}).logits.numpy()


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
@pytest.mark.parametrize('weights', ['init', 'trained'])
def test_export_matches_transformers_logits_and_tokenizer(ours, tmp_path, capsys, objective, weights):
  checkpoint = ours(objective, weights)
  assert convert_checkpoint.main(['to-hf', '--checkpoint', str(checkpoint), '--out', str(tmp_path / 'hf'),
                                  '--verify']) == 0
  assert 'logits match transformers within' in capsys.readouterr().out
  auto = transformers.AutoModelForMaskedLM if objective == 'mlm' else transformers.AutoModelForCausalLM
  model = auto.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is HF_CLASSES[objective]
  loaded = model_load.load_checkpoint(str(checkpoint))
  ids = np.random.default_rng(0).integers(0, loaded.tokenizer.vocab_size, (2, 24))
  kwargs = {'token_type_ids': (np.arange(24) >= 10).astype(np.int64)[None].repeat(2, 0)} if objective == 'mlm' else {}
  diff = np.abs(_our_logits(checkpoint, ids, **kwargs) - _hf_logits(model, ids, **kwargs)).max()
  assert diff <= TOLERANCE, diff

  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')
  for text in TEXTS:
    ids = loaded.tokenizer.encode(text)
    assert hf_tokenizer(text, add_special_tokens=False)['input_ids'] == ids
    assert hf_tokenizer.decode(ids) == text
  if objective == 'mlm':  # HF's pair encoding is what our fine-tuning feeds: [CLS] a [SEP] b [SEP]
    tok = loaded.tokenizer
    pair = hf_tokenizer('a cat', 'a dog')
    a, b = tok.encode('a cat'), tok.encode('a dog')
    assert pair['input_ids'] == [tok.cls_id, *a, tok.sep_id, *b, tok.sep_id]
    assert pair['token_type_ids'] == [0] * (len(a) + 2) + [1] * (len(b) + 1)


@pytest.mark.parametrize('objective,wrong_mlp', [('mlm', 'gelu_tanh'), ('clm', 'gelu')])
def test_parity_would_catch_a_swapped_gelu(ours, tmp_path, objective, wrong_mlp):
  """On trained weights, our model with the other GELU is off transformers' logits by several tolerances, while the
  right one is within it: the parity tests would catch an activation mapped wrong in either direction."""
  checkpoint = ours(objective, 'trained')
  export_lib.export(str(checkpoint), str(tmp_path / 'hf'))
  reference = HF_CLASSES[objective].from_pretrained(tmp_path / 'hf').eval()
  loaded = model_load.load_checkpoint(str(checkpoint))
  ids = np.random.default_rng(0).integers(0, loaded.tokenizer.vocab_size, (2, 24))
  theirs = _hf_logits(reference, ids)
  swapped_cfg = dataclasses.replace(loaded.model_cfg, mlp=wrong_mlp)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: model_load.model_builder(swapped_cfg, None)(0)))
  swapped = np.asarray(nnx.merge(graphdef, loaded.params)(jnp.asarray(ids)))
  assert np.abs(np.asarray(loaded.build()(jnp.asarray(ids))) - theirs).max() <= TOLERANCE
  assert np.abs(swapped - theirs).max() > 4 * TOLERANCE


def test_verify_fails_when_the_hf_weights_differ(ours, tmp_path):
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  checkpoint = ours('clm', 'trained')
  export_lib.export(str(checkpoint), str(tmp_path / 'hf'))
  tensors = load_file(tmp_path / 'hf' / 'model.safetensors')
  tensors['transformer.h.1.mlp.c_fc.weight'] += 0.01  # a mapping bug's worth of difference
  save_file(tensors, tmp_path / 'hf' / 'model.safetensors', metadata={'format': 'pt'})
  with pytest.raises(ConfigError, match=r'--verify: GPT2LMHeadModel logits differ by'):
    verify.verify(str(checkpoint), str(tmp_path / 'hf'))


def test_padded_batches_match_on_real_tokens(ours, tmp_path):
  checkpoint = ours('mlm', 'trained')
  export_lib.export(str(checkpoint), str(tmp_path / 'hf'))
  model = transformers.BertForMaskedLM.from_pretrained(tmp_path / 'hf').eval()
  ids = np.random.default_rng(1).integers(5, 400, (2, 16))
  real = np.array([[1] * 16, [1] * 9 + [0] * 7])
  ours_btv = _our_logits(checkpoint, ids, segment_ids=real)
  theirs_btv = _hf_logits(model, ids, attention_mask=real)
  assert np.abs(ours_btv - theirs_btv)[real == 1].max() <= TOLERANCE


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_round_trip_ours_hf_ours_is_bitwise_identical(ours, tmp_path, objective):
  checkpoint = ours(objective, 'trained')
  export_lib.export(str(checkpoint), str(tmp_path / 'hf'))
  importer.import_hf(str(tmp_path / 'hf'), str(tmp_path / 'back'))
  before, after = model_load.load_checkpoint(str(checkpoint)), model_load.load_checkpoint(str(tmp_path / 'back'))
  flat_before, flat_after = model_load.flatten(before.params), model_load.flatten(after.params)
  assert flat_before.keys() == flat_after.keys()
  for name in flat_before:
    assert np.array_equal(np.asarray(flat_before[name]), np.asarray(flat_after[name])), name
  assert after.tokenizer.to_bytes() == before.tokenizer.to_bytes()
  assert after.model_cfg == before.model_cfg
  assert after.meta['imported_from']['freshly_initialised'] == []


# --- from-hf: tiny random transformers models with real WordPiece / byte-level BPE tokenizers ---------------

WORDS = 'the cat dog sat on a mat and ran under red blue tree house saw it'.split()


def _bert_dir(path: pathlib.Path, train_steps: int, safetensors: bool = True) -> pathlib.Path:
  vocab = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', *WORDS, *'bcdefghijklmnopqrstuvwxyz.,!?',
           *(f'##{c}' for c in 'abcdefghijklmnopqrstuvwxyz')]
  path.mkdir(parents=True)
  (path / 'vocab.txt').write_text('\n'.join(vocab) + '\n')
  (path / 'tokenizer_config.json').write_text(json.dumps({'do_lower_case': True}))
  config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)
  torch.manual_seed(0)
  model = transformers.BertForMaskedLM(config)
  _train(model, len(vocab), train_steps, token_types=True)
  _save(model, path, safetensors)
  return path


def _save(model, path: pathlib.Path, safetensors: bool) -> None:
  """model.safetensors, or pytorch_model.bin as older checkpoints (and transformers 4 by request) wrote."""
  model.save_pretrained(path)
  if not safetensors:
    torch.save(model.state_dict(), path / 'pytorch_model.bin')
    (path / 'model.safetensors').unlink()


def _gpt2_dir(path: pathlib.Path, train_steps: int, safetensors: bool = True) -> pathlib.Path:
  import tokenizers  # pylint: disable=import-outside-toplevel
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator([' '.join(WORDS)] * 20 + TEXTS, vocab_size=300, special_tokens=['<|endoftext|>'])
  path.mkdir(parents=True)
  bpe.save_model(str(path))  # vocab.json + merges.txt, as GPT-2 checkpoints ship them
  config = transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2,
                                   n_head=4, bos_token_id=0, eos_token_id=0)
  torch.manual_seed(0)
  model = transformers.GPT2LMHeadModel(config)
  _train(model, bpe.get_vocab_size(), train_steps, token_types=False)
  _save(model, path, safetensors)
  return path


def _train(model, vocab_size: int, steps: int, token_types: bool) -> None:
  """Real optimizer steps at a high learning rate, so the weights are far from their initialisation."""
  optimizer = torch.optim.AdamW(model.parameters(), lr=TRAINED['learning_rate'])
  generator = torch.Generator().manual_seed(1)
  for _ in range(steps):
    ids = torch.randint(0, vocab_size, (4, 16), generator=generator)
    extra = {'token_type_ids': torch.randint(0, 2, (4, 16), generator=generator)} if token_types else {}
    loss = model(ids, labels=ids, **extra).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
  model.eval()


@pytest.mark.parametrize('variant,make', [('bert', _bert_dir), ('gpt2', _gpt2_dir)])
@pytest.mark.parametrize('steps,safetensors', [(0, True), (TRAINED['steps'], False)])
def test_import_matches_transformers_logits(tmp_path, variant, make, steps, safetensors):
  hf_dir = make(tmp_path / 'hf', steps, safetensors)
  assert (hf_dir / ('model.safetensors' if safetensors else 'pytorch_model.bin')).is_file()
  summary = importer.import_hf(str(hf_dir), str(tmp_path / 'ours'))
  # BertForMaskedLM has no pooler (add_pooling_layer=False): ours is freshly initialised, and the summary says so.
  assert summary['freshly_initialised'] == (['pooler'] if variant == 'bert' else [])
  assert summary['tokenizer'] == 'HfTokenizer'
  model = HF_CLASSES['mlm' if variant == 'bert' else 'clm'].from_pretrained(hf_dir).eval()
  ids = np.random.default_rng(steps).integers(0, model.config.vocab_size, (2, 20))
  kwargs = {'token_type_ids': np.tile((np.arange(20) >= 8).astype(np.int64), (2, 1))} if variant == 'bert' else {}
  diff = np.abs(_our_logits(tmp_path / 'ours', ids, **kwargs) - _hf_logits(model, ids, **kwargs)).max()
  assert diff <= TOLERANCE, diff

  tokenizer = model_load.load_checkpoint(str(tmp_path / 'ours')).tokenizer
  reference = transformers.AutoTokenizer.from_pretrained(hf_dir) if variant == 'bert' else \
      transformers.GPT2TokenizerFast(str(hf_dir / 'vocab.json'), str(hf_dir / 'merges.txt'))
  text = 'The cat sat on a mat, and the dog ran!'
  assert tokenizer.encode(text) == reference(text, add_special_tokens=False)['input_ids']
  if variant == 'bert':
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id) == (2, 3, 4, 0)


def test_imported_checkpoint_continues_pretraining_with_its_architecture_and_tokenizer(tmp_path):
  importer.import_hf(str(_bert_dir(tmp_path / 'hf', 0)), str(tmp_path / 'imported'))
  config = tiny_config('mlm')  # hidden 64, vocab 512: replaced by the checkpoint's 32 and its vocab
  config.init_checkpoint = str(tmp_path / 'imported')
  config.train.steps, config.train.warmup_steps, config.train.eval_every = 1, 1, 1000
  config.train.eval_batches = 1
  pretrain_train.run(config, str(tmp_path / 'continued'))
  before = model_load.load_checkpoint(str(tmp_path / 'imported'))
  after = model_load.load_checkpoint(str(tmp_path / 'continued'))
  assert after.model_cfg.hidden_size == 32 and after.tokenizer.vocab_size == before.tokenizer.vocab_size
  flat_before, flat_after = model_load.flatten(before.params), model_load.flatten(after.params)
  for name in flat_before:  # one step at learning rate 0 (the first warmup step) changes nothing
    assert np.array_equal(np.asarray(flat_before[name]), np.asarray(flat_after[name])), name


def test_finetuned_bert_exports_as_sequence_classification(ours, tmp_path):
  write_task(tmp_path / 'glue', 'mrpc', rows=48)
  config = finetune_glue.get_config('task=mrpc')
  config.init_checkpoint, config.data.source = str(ours('mlm', 'trained')), f'glue_dir:{tmp_path / "glue"}'
  config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 1
  config.data.max_length, config.model.dropout_rate = 32, 0.0
  results = finetune_train.run(config, str(tmp_path / 'run'))
  summary = export_lib.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  assert summary['architecture'] == 'BertForSequenceClassification'
  model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is transformers.BertForSequenceClassification
  assert model.config.id2label == {0: '0', 1: '1'} and model.config.finetuning_task == 'mrpc'
  loaded = model_load.load_checkpoint(results['checkpoint'])
  ids = np.random.default_rng(0).integers(5, 400, (3, 16))
  types, real = np.tile((np.arange(16) >= 7).astype(np.int64), (3, 1)), np.ones((3, 16), np.int64)
  ours_bc = np.asarray(loaded.build()(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(real)))
  assert np.abs(ours_bc - _hf_logits(model, ids, token_type_ids=types)).max() <= TOLERANCE


# --- bad input ------------------------------------------------------------------------------------------------

def _edit_config(hf_dir: pathlib.Path, **fields) -> None:
  config = json.loads((hf_dir / 'config.json').read_text())
  config.update(fields)
  (hf_dir / 'config.json').write_text(json.dumps(config))


def _drop_tensor(hf_dir: pathlib.Path, name: str) -> None:
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(hf_dir / 'model.safetensors')
  del tensors[name]
  save_file(tensors, hf_dir / 'model.safetensors')


@pytest.mark.parametrize('edit,match', [
    (lambda d: _edit_config(d, model_type='roberta'), r"config\.json: model_type 'roberta' is not supported"),
    (lambda d: _edit_config(d, hidden_act='relu'), r"config\.json: hidden_act 'relu'"),
    (lambda d: _drop_tensor(d, 'bert.encoder.layer.1.output.dense.weight'),
     r"model\.safetensors: tensor 'bert\.encoder\.layer\.1\.output\.dense\.weight' is missing"),
    (lambda d: _edit_config(d, intermediate_size=96),
     r"tensor 'bert\.encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(64, 32\), but config\.json "
     r'implies \(96, 32\)'),
    (lambda d: _edit_config(d, vocab_size=40),
     r"config\.json: vocab_size 40 is smaller than the tokenizer's 76 tokens"),
])
def test_bad_hf_directory_is_one_error_naming_the_field_and_writes_nothing(tmp_path, edit, match):
  hf_dir = _bert_dir(tmp_path / 'hf', 0)
  edit(hf_dir)
  with pytest.raises(ConfigError, match=match):
    importer.import_hf(str(hf_dir), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists() and [p.name for p in tmp_path.iterdir()] == ['hf']


def test_a_crash_mid_export_leaves_no_output_directory(ours, tmp_path, monkeypatch):
  def crash(*args, **kwargs):
    raise KeyboardInterrupt  # a kill while model.safetensors is being written
  monkeypatch.setattr(export_lib, 'save_file', crash)
  with pytest.raises(KeyboardInterrupt):
    export_lib.export(str(ours('mlm', 'trained')), str(tmp_path / 'hf'))
  assert list(tmp_path.iterdir()) == []


def test_cli_errors_are_one_line_with_exit_2(ours, tmp_path):
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep.txt').write_text('user data')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cases = [
      (['to-hf', '--checkpoint', str(ours('mlm', 'trained')), '--out', str(tmp_path / 'full')], 'exists and is not empty'),
      (['to-hf', '--checkpoint', str(tmp_path / 'nothing'), '--out', str(tmp_path / 'x')], 'does not exist'),
      (['from-hf', '--hf', str(tmp_path / 'full'), '--out', str(tmp_path / 'y')], 'config.json does not exist'),
  ]
  for args, message in cases:
    proc = subprocess.run([sys.executable, '-m', 'tools.convert_checkpoint', *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], \
        proc.stderr
  assert (tmp_path / 'full' / 'keep.txt').read_text() == 'user data'
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


def test_gpt2_classifier_has_no_hf_class(ours, tmp_path):
  clm = model_load.load_checkpoint(str(ours('clm', 'trained')))
  fake = model_load.LoadedCheckpoint(clm.model_cfg, clm.tokenizer, {}, clm.meta, clm.step_dir,
                                           {'task': 'sst2', 'num_labels': 2, 'labels': ['0', '1'],
                                            'is_regression': False, 'pooling': 'auto'})
  with pytest.raises(ConfigError, match=r"--checkpoint: a fine-tuned gpt2 model with pooling 'auto' has no"):
    export_lib.hf_tensors(fake)


def test_without_the_hf_extra_the_cli_names_the_missing_package(ours, tmp_path, monkeypatch, capsys):
  for name in ('safetensors', 'safetensors.numpy'):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: importing it raises ModuleNotFoundError
  monkeypatch.delitem(sys.modules, 'tools.convert_checkpoint.export')
  args = ['to-hf', '--checkpoint', str(ours('mlm', 'trained')), '--out', str(tmp_path / 'hf')]
  assert convert_checkpoint.main(args) == 2
  assert capsys.readouterr().err.strip() == ("error: to-hf: needs the Python package 'safetensors' of the `hf` "
                                             "extra (on CPU machines: pip install torch==2.13.0 && pip install -e "
                                             "'.[hf]')")
  assert not (tmp_path / 'hf').exists()
