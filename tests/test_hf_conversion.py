"""tools.convert_checkpoint to-hf against real `transformers` PyTorch models: both architectures, the
sequence-classification export, the bitwise round trip, and the command line (from-hf: test_hf_import.py).

Parity is checked on trained weights (tests/checkpoint_fixtures.TRAINED, and transformers models trained the same
way), not only at the near-zero initialisation, where an erf GELU and a tanh one give the same logits to 1e-5:
test_parity_would_catch_a_swapped_gelu shows the tolerance tells them apart.
"""
import dataclasses
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from configs import finetune_glue
from finetune import train as finetune_train
from pretrain.runtime.errors import ConfigError
from pretrain.model import load as model_load
from tests.glue_fixtures import write_task
from tests.hf_fixtures import HF_CLASSES, TEXTS, TOLERANCE, hf_logits, our_logits
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib
from tools.convert_checkpoint import importer, verify

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def ours(checkpoints):
  """(objective, weights) -> a tiny pretraining workdir: weights 'init' (the random initialisation), 'trained'."""
  return lambda objective, weights: (checkpoints(objective, steps=0) if weights == 'init'
                                     else checkpoints.trained(objective))


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
  diff = np.abs(our_logits(checkpoint, ids, **kwargs) - hf_logits(model, ids, **kwargs)).max()
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
  theirs = hf_logits(reference, ids)
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
  ours_btv = our_logits(checkpoint, ids, segment_ids=real)
  theirs_btv = hf_logits(model, ids, attention_mask=real)
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
  assert after.model_cfg.architecture() == before.model_cfg.architecture()  # runtime fields are the importer's
  assert after.meta['imported_from']['freshly_initialised'] == []


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
  assert np.abs(ours_bc - hf_logits(model, ids, token_type_ids=types)).max() <= TOLERANCE


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
      (['to-hf', '--checkpoint', str(ours('mlm', 'trained')), '--out', str(tmp_path / 'full')],
       'exists and is not empty'),
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
