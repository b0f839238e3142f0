"""Sentence pairs for nsp / sop: well-formed deterministic rows from real text, training through
pretrain.train.run (learning signal, exact resume, exact gradient accumulation), export, and bad configs."""
import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from pydoc_data import topics

from pretrain.data import sentence_pairs
from pretrain import train
from pretrain.settings import PretrainSettings, check_resumable
from pretrain.trainer import make_trainer
from pretrain.runtime import sharding
from pretrain.runtime.errors import ConfigError
from pretrain.runtime.metrics_log import TIMING_FIELDS
from pretrain.data.tokenizer import train_sentencepiece
from tests.helpers import tiny_config

DOCS = [topics.topics[k] for k in sorted(topics.topics)[:40]]


@pytest.fixture(scope='module')
def tok(tmp_path_factory):
  return train_sentencepiece(DOCS, 500, tmp_path_factory.mktemp('tok') / 'spm.model')


def test_sentences_tile_the_text():
  text = 'See e.g. the table (3.14 is pi).  It ends here! "Quoted?" Yes.\n\nNext line\nwithout a stop'
  assert sentence_pairs.split_sentences(text) == [
      'See e.g. the table (3.14 is pi).', '  It ends here!', ' "Quoted?"', ' Yes.\n\n', 'Next line\n',
      'without a stop']
  for doc in DOCS:
    sentences = sentence_pairs.split_sentences(doc)
    assert ''.join(sentences) == doc and all(s.strip() for s in sentences)


def _halves(rows: dict, i: int) -> tuple[np.ndarray, np.ndarray]:
  """A and B of row i, without [CLS] and [SEP]s."""
  real = rows['segment_ids'][i] > 0
  tokens, types = rows['tokens'][i][real], rows['token_types'][i][real]
  return tokens[types == 0][1:-1], tokens[types == 1][:-1]


@pytest.mark.parametrize('task', ['nsp', 'sop'])
def test_pair_rows_are_well_formed_balanced_and_deterministic(tok, task):
  pairs = sentence_pairs.pair_rows(DOCS, tok, 64, task, seed=0, split='train')
  ids = np.arange(len(pairs) + 2)  # two past the end: all-padding rows, as eval batches pad
  rows = pairs.batch(ids)
  assert all(v.dtype == np.int32 for v in rows.values())
  assert rows['sentence_labels'].shape == (len(ids), 1) and rows['tokens'].shape == (len(ids), 64)
  for i in range(len(pairs)):
    length = int(rows['segment_ids'][i].sum())
    tokens, types = rows['tokens'][i], rows['token_types'][i]
    assert (rows['segment_ids'][i][:length] == 1).all() and (rows['segment_ids'][i][length:] == 0).all()
    np.testing.assert_array_equal(rows['positions'][i][:length], np.arange(length))
    assert tokens[0] == tok.cls_id and (tokens[length:] == tok.pad_id).all() and not types[length:].any()
    seps = np.flatnonzero(tokens[:length] == tok.sep_id)
    assert len(seps) == 2 and seps[1] == length - 1 and 1 < seps[0] < length - 2  # A and B non-empty
    np.testing.assert_array_equal(types[:length], np.arange(length) > seps[0])  # 0: [CLS] A [SEP]; 1: B [SEP]
  labels = rows['sentence_labels'][:len(pairs), 0]
  assert abs(labels.mean() - 0.5) < 4 * np.sqrt(0.25 / len(pairs)), labels.mean()
  assert not rows['segment_ids'][len(pairs):].any() and not rows['sentence_labels'][len(pairs):].any()
  again = sentence_pairs.pair_rows(DOCS, tok, 64, task, seed=0, split='train').batch(ids)
  other_seed = sentence_pairs.pair_rows(DOCS, tok, 64, task, seed=1, split='train').batch(ids[:len(pairs)])
  jax.tree.map(np.testing.assert_array_equal, rows, again)
  assert not np.array_equal(rows['sentence_labels'][:len(pairs)], other_seed['sentence_labels'])


def _as_text(ids) -> str:
  """Token ids as a string, so that `in` finds contiguous runs."""
  return ''.join(chr(0x1000 + int(i)) for i in ids)


@pytest.mark.parametrize('task', ['nsp', 'sop'])
def test_is_next_pairs_are_contiguous_and_the_others_are_swapped_or_from_another_document(tok, task):
  # Short real paragraphs (no truncation of A): is-next A+B is a run of one document; sop's swapped pairs are B+A;
  # nsp's random B is a run of another document.
  paragraphs = list(dict.fromkeys(p for doc in DOCS for p in doc.split('\n\n')
                                  if 20 < len(tok.encode(p)) < 60 and '. ' in p))
  docs = [_as_text(np.concatenate(d)) for d in sentence_pairs.encode_sentences(paragraphs, tok)]
  rows = sentence_pairs.pair_rows(paragraphs, tok, 256, task, seed=0, split='train')
  features = rows.batch(np.arange(len(rows)))
  checked = 0
  for i, label in enumerate(features['sentence_labels'][:, 0]):
    a, b = map(_as_text, _halves(features, i))
    if label == 0:
      assert any(a + b in d for d in docs)
    elif task == 'sop':
      assert any(b + a in d for d in docs) and not any(a + b in d for d in docs)
    elif len(b) >= 8:  # long enough not to occur in several paragraphs by chance
      homes_of_a = [j for j, d in enumerate(docs) if a in d]
      homes_of_b = [j for j, d in enumerate(docs) if b in d]
      assert homes_of_a and homes_of_b and not set(homes_of_a) & set(homes_of_b)
      checked += 1
  assert task == 'sop' or checked > 10


def _config(task, steps=4, **mlm):
  config = tiny_config('mlm')
  config.mlm.sentence_task = task
  for key, value in mlm.items():
    config.mlm[key] = value
  config.train.steps = steps
  config.train.log_every = 1
  config.train.eval_every = 2
  config.train.eval_batches = 2
  config.train.checkpoint_every = 2
  return config


def _lines(workdir) -> list[dict]:
  return [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]


def _without_timings(lines: list[dict]) -> list[dict]:
  return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in lines]


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """task -> the workdir of a real 4-step run (nsp with whole-word masking), checkpoints at steps 2 and 4."""
  made = {}

  def get(task):
    if task not in made:
      made[task] = tmp_path_factory.mktemp(task)
      train.run(_config(task, whole_word_masking=task == 'nsp'), str(made[task]))
    return made[task]
  return get


@pytest.mark.parametrize('task', ['nsp', 'sop'])
def test_pretraining_with_a_sentence_task_reports_it_and_resumes_exactly(runs, tmp_path, task):
  workdir = runs(task)
  lines = _lines(workdir)
  train_lines = [r for r in lines if 'sentence_loss' in r]
  eval_lines = [r for r in lines if 'eval_sentence_loss' in r]
  assert [r['step'] for r in train_lines] == [1, 2, 3, 4] and [r['step'] for r in eval_lines] == [2, 4]
  for r in train_lines:
    assert np.isfinite([r['loss'], r['sentence_loss']]).all() and 0 <= r['sentence_accuracy'] <= 1
  assert 0.4 < eval_lines[-1]['eval_sentence_loss'] < 1.5 and 0 <= eval_lines[-1]['eval_sentence_accuracy'] <= 1
  # A job killed after its step-2 checkpoint, rerun: the same losses, step for step, bit for bit.
  shutil.copytree(workdir, tmp_path / 'killed')
  shutil.rmtree(tmp_path / 'killed' / 'checkpoints' / '4')
  train.run(_config(task, whole_word_masking=task == 'nsp'), str(tmp_path / 'killed'))
  assert _without_timings(_lines(tmp_path / 'killed')) == _without_timings(lines)


def test_sentence_task_gradient_accumulation_equals_one_step_on_the_whole_batch(tok):
  """microbatches=2 gives the update of one step on the whole batch, an all-padding row included."""
  config = _config('nsp', whole_word_masking=True)
  config.model.dropout_rate = 0.1
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  pairs = sentence_pairs.pair_rows(DOCS, tok, config.data.seq_len, 'nsp', seed=0, split='train')
  local = pairs.batch(np.append(np.arange(7), len(pairs)))  # 7 pairs and one padding row
  results = []
  for microbatches in (1, 2):
    config.train.microbatches = microbatches
    mesh = sharding.make_mesh(config.mesh)
    with sharding.use_mesh_and_rules(mesh, config.sharding_rules):
      trainer = make_trainer(PretrainSettings.from_config(config), mesh, tok)
      batch = sharding.global_batch_from_local(local, trainer.batch_sharding)
      assert jax.tree.map(lambda a: (a.shape, a.sharding), batch) == jax.tree.map(
          lambda a: (a.shape, a.sharding), trainer.abstract_batch)
      results.append(jax.device_get(trainer.grads_step(trainer.init(), batch)))
  (grads_1, sums_1), (grads_2, sums_2) = results
  assert sums_1['sentence_weight_sum'] == sums_2['sentence_weight_sum'] == 7  # the padding row does not count
  for key in ('loss_sum', 'sentence_loss_sum', 'sentence_correct_sum'):
    np.testing.assert_allclose(sums_2[key], sums_1[key], rtol=2e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads_2, grads_1)
  assert np.abs(grads_1['sentence_head']['kernel']).max() > 0


def test_export_as_bert_for_pretraining_matches_transformers(runs, tmp_path):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from pretrain.model import load as model_load  # pylint: disable=import-outside-toplevel
  from tools.convert_checkpoint import cli as convert_checkpoint  # pylint: disable=import-outside-toplevel
  workdir = runs('sop')
  assert convert_checkpoint.main(['to-hf', '--checkpoint', str(workdir), '--out', str(tmp_path / 'hf'),
                                  '--verify']) == 0
  reference = transformers.BertForPreTraining.from_pretrained(tmp_path / 'hf').eval()
  loaded = model_load.load_checkpoint(str(workdir))
  ids = np.random.default_rng(0).integers(5, loaded.tokenizer.vocab_size, (2, 24))
  types = np.tile((np.arange(24) >= 10).astype(np.int64), (2, 1))
  with torch.no_grad():
    out = reference(torch.tensor(ids), token_type_ids=torch.tensor(types))
  logits, sentence_logits = loaded.build().pretraining_logits(ids, token_type_ids=types)
  np.testing.assert_allclose(np.asarray(logits), out.prediction_logits.numpy(), atol=1e-4)
  np.testing.assert_allclose(np.asarray(sentence_logits), out.seq_relationship_logits.numpy(), atol=1e-4)
  assert 'sentence_head' in loaded.params  # the tools load the whole pretraining model


def test_continued_pretraining_from_an_mlm_only_checkpoint_adds_a_fresh_sentence_head(checkpoints, tmp_path):
  from pretrain.model import load as model_load  # pylint: disable=import-outside-toplevel
  mlm_only = checkpoints('mlm', steps=0)
  before = model_load.load_checkpoint(str(mlm_only))
  config = _config('nsp', steps=1)
  config.init_checkpoint = str(mlm_only)
  config.train.warmup_steps, config.train.eval_batches = 1, 1
  train.run(config, str(tmp_path / 'nsp'))
  after = model_load.load_checkpoint(str(tmp_path / 'nsp'))
  assert after.params['sentence_head']['kernel'].shape == (config.model.hidden_size, 2)
  # One step at learning rate 0 (the first warmup step): every pretrained weight is as it was.
  jax.tree.map(np.testing.assert_array_equal, before.params, {k: after.params[k] for k in before.params})


@pytest.mark.parametrize('objective,mlm,match', [
    ('clm', {'sentence_task': 'nsp'}, r"^mlm\.sentence_task: needs objective 'mlm', got 'clm'$"),
    ('mlm', {'sentence_task': 'next'}, r"^mlm\.sentence_task: 'next' is not one of \('none', 'nsp', 'sop'\)$"),
    ('clm', {'whole_word_masking': True}, r"^mlm\.whole_word_masking: needs objective 'mlm', got 'clm'$"),
])
def test_bad_sentence_task_combinations_name_the_field(monkeypatch, tmp_path, objective, mlm, match):
  config = tiny_config(objective)
  for key, value in mlm.items():
    config.mlm[key] = value
  monkeypatch.setattr(train, 'make_trainer', lambda *a, **k: pytest.fail('compiled before rejecting the config'))
  with pytest.raises(ConfigError, match=match):
    train.run(config, str(tmp_path))


def test_resuming_with_another_sentence_task_names_the_field():
  config = _config('nsp')
  saved = json.loads(config.to_json_best_effort())
  del saved['mlm']['sentence_task']  # a checkpoint written before the option existed: no sentence head
  with pytest.raises(ConfigError, match=r"^mlm\.sentence_task: 'nsp' differs from 'none' in the checkpoint at ckpt"):
    check_resumable(PretrainSettings.from_config(config), {'config': saved}, 'ckpt')
  config.mlm.sentence_task = 'none'
  check_resumable(PretrainSettings.from_config(config), {'config': saved}, 'ckpt')


def test_prepared_sources_are_refused_for_sentence_pairs(monkeypatch, tmp_path):
  config = _config('sop')
  config.data.source = f'prepared:{tmp_path}'
  monkeypatch.setattr(train, 'make_trainer', lambda *a, **k: pytest.fail('compiled before rejecting the config'))
  with pytest.raises(ConfigError, match=r"^mlm\.sentence_task: 'sop' builds sentence pairs from documents"):
    train.run(config, str(tmp_path / 'run'))
