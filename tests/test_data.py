"""build_data: packing invariants, held-out split, determinism, exact resume, per-process slices, errors."""

import collections
import json

import ml_collections
import numpy as np
import pytest
from pydoc_data import topics

from pretrain.data import sources
from pretrain.runtime.errors import ConfigError
from pretrain.data.tokenizer import Tokenizer, train_sentencepiece
from pretrain.data.packing import features
from pretrain.data.pipeline import DataPipeline
from tests.helpers import build_data_error, data_pipeline

SEQ_LEN = 64
BATCH = 8
VOCAB = 500


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  """30 real reference texts as files, one duplicated (duplicates must share a split)."""
  root = tmp_path_factory.mktemp('corpus')
  for i, key in enumerate(sorted(topics.topics)[:30]):
    (root / f'{i:02d}.txt').write_text(topics.topics[key])
  (root / '99_duplicate.txt').write_text(topics.topics[sorted(topics.topics)[3]])
  return root


@pytest.fixture(scope='module')
def tokenizer_path(corpus_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'spm.model'
  train_sentencepiece([p.read_text() for p in sorted(corpus_dir.glob('*.txt'))], VOCAB, path)
  return path


def make_config(source: str, tokenizer: str = '', **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({
      'seed': 0,
      'data': {'source': source, 'seq_len': SEQ_LEN, 'tokenizer': str(tokenizer), 'eval_fraction': 0.1,
               'max_doc_chars': 100_000, 'num_workers': 0, 'allow_source_change': False},
      'model': {'vocab_size': VOCAB},
      'train': {'batch_size': BATCH},
  })
  for dotted, value in overrides.items():  # data__seq_len=32 sets config.data.seq_len
    *section, name = dotted.split('__')
    (config[section[0]] if section else config)[name] = value
  return config


@pytest.fixture(scope='module')
def config(corpus_dir, tokenizer_path):
  return make_config(f'text:{corpus_dir}/*.txt', tokenizer_path)


@pytest.fixture(scope='module')
def pipeline(config) -> DataPipeline:
  return data_pipeline(config)


def take(it, n: int) -> list[dict[str, np.ndarray]]:
  return [next(it) for _ in range(n)]


def documents_of(rows_tokens: np.ndarray, tok: Tokenizer) -> list[str]:
  """Texts of the documents packed in rows (in order), split at cls, which only starts documents."""
  stream = rows_tokens[rows_tokens != tok.pad_id]
  starts = np.flatnonzero(stream == tok.cls_id)
  assert starts[0] == 0
  pieces = np.split(stream, starts[1:])
  assert all(p[-1] == tok.sep_id for p in pieces)
  return [tok.decode(p) for p in pieces]


def assert_row_invariants(batch: dict[str, np.ndarray], pad_id: int) -> None:
  tokens, seg, pos = batch['tokens'], batch['segment_ids'], batch['positions']
  assert all(v.dtype == np.int32 and v.shape == tokens.shape for v in batch.values())
  pad = seg == 0
  assert (tokens[pad] == pad_id).all() and (pos[pad] == 0).all()
  assert (np.diff(pad.astype(int), axis=1) >= 0).all()  # padding only at the end of a row
  prev = np.pad(seg[:, :-1], ((0, 0), (1, 0)))
  starts = ~pad & (seg != prev)
  assert ((seg - prev)[~pad] <= 1).all() and (seg[:, 0][~pad[:, 0]] == 1).all()  # 1, 2, 3, ... per row
  assert ((pos == 0) == (starts | pad)).all()  # positions restart exactly at segment starts
  inside = ~pad & ~starts
  prev_pos = np.pad(pos[:, :-1], ((0, 0), (1, 0)))
  assert (pos[inside] == prev_pos[inside] + 1).all()


def test_batches_are_int32_rows_with_packing_invariants(pipeline):
  assert pipeline.stats['train_rows'] > 20 * BATCH
  for batch in take(pipeline.train_iterator(), 20):
    assert batch['tokens'].shape == (BATCH, SEQ_LEN)
    assert_row_invariants(batch, pipeline.tokenizer.pad_id)
  for batch in pipeline.eval_batches(100):
    assert_row_invariants(batch, pipeline.tokenizer.pad_id)


def test_every_document_is_packed_exactly_once_and_eval_is_held_out(pipeline, corpus_dir):
  tok = pipeline.tokenizer
  train = documents_of(pipeline.train_rows.tokens, tok)
  held_out = documents_of(np.concatenate([b['tokens'] for b in pipeline.eval_batches(1000)]), tok)
  corpus = [p.read_text() for p in sorted(corpus_dir.glob('*.txt'))]
  assert collections.Counter(train + held_out) == collections.Counter(corpus)
  assert held_out and not set(held_out) & set(train)  # the duplicated text is on one side only
  assert (pipeline.stats['train_documents'], pipeline.stats['eval_documents']) == (len(train), len(held_out))
  rows = pipeline.train_rows
  assert (rows.tokens[:-1] != tok.pad_id).all()  # only the last row has padding
  assert pipeline.stats['train_tokens'] == int((rows.tokens != tok.pad_id).sum())


def test_rows_cut_documents_and_continue_as_new_segment(pipeline):
  tok = pipeline.tokenizer
  feats = features(pipeline.train_rows.tokens, pipeline.train_rows.kind)
  continued = feats['tokens'][:, 0] != tok.cls_id  # row starts inside a document
  assert continued.any()
  assert (feats['segment_ids'][continued, 0] == 1).all() and (feats['positions'][continued, 0] == 0).all()


def test_each_epoch_visits_every_row_once_in_a_new_order(pipeline):
  rows = pipeline.stats['train_rows']
  steps = -(-2 * rows // BATCH)
  stream = np.concatenate([b['tokens'] for b in take(pipeline.train_iterator(), steps)])
  packed = sorted(r.tobytes() for r in pipeline.train_rows.tokens)
  epoch1, epoch2 = stream[:rows], stream[rows:2 * rows]
  assert sorted(r.tobytes() for r in epoch1) == packed
  assert sorted(r.tobytes() for r in epoch2) == packed
  assert not np.array_equal(epoch1, epoch2)


def test_same_config_same_batches_other_seed_other_order(config, pipeline):
  again = data_pipeline(config)
  for a, b in zip(take(pipeline.train_iterator(), 3), take(again.train_iterator(), 3)):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  for a, b in zip(pipeline.eval_batches(5), again.eval_batches(5)):
    assert np.array_equal(a['tokens'], b['tokens'])
  other = data_pipeline(make_config(config.data.source, config.data.tokenizer, seed=1))
  assert not np.array_equal(next(other.train_iterator())['tokens'], next(pipeline.train_iterator())['tokens'])


def test_resume_from_saved_state_equals_uninterrupted(config, pipeline):
  it = pipeline.train_iterator()
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 3)
  resumed = data_pipeline(config).train_iterator()
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 3)):
    assert all(np.array_equal(a[k], b[k]) for k in a)
  assert resumed.get_state() == {'step': 8, 'fingerprint': pipeline.fingerprint}
  with pytest.raises(ConfigError, match='data iterator state'):
    resumed.set_state({'next_index': 3})


def test_two_processes_slice_each_global_batch(config, pipeline):
  halves = [data_pipeline(config, process_index=p, process_count=2) for p in range(2)]
  assert halves[0].tokenizer.to_bytes() == pipeline.tokenizer.to_bytes()
  full = take(pipeline.train_iterator(), 4)
  parts = [take(h.train_iterator(), 4) for h in halves]
  for step in range(4):
    for k in full[step]:
      assert parts[0][step][k].shape == (BATCH // 2, SEQ_LEN)
      assert np.array_equal(np.concatenate([parts[0][step][k], parts[1][step][k]]), full[step][k])
  for e, e0, e1 in zip(pipeline.eval_batches(3), halves[0].eval_batches(3), halves[1].eval_batches(3)):
    assert np.array_equal(np.concatenate([e0['tokens'], e1['tokens']]), e['tokens'])


def test_eval_batches_are_fixed_and_last_one_padded(pipeline):
  rows = pipeline.stats['eval_rows']
  batches = pipeline.eval_batches(1000)
  assert len(batches) == -(-rows // BATCH) and len(pipeline.eval_batches(1)) == 1
  tokens = np.concatenate([b['tokens'] for b in batches])
  seg = np.concatenate([b['segment_ids'] for b in batches])
  assert (seg[rows:] == 0).all() and (seg[:rows, 0] > 0).all()  # padding rows only after the real ones
  assert all(np.array_equal(a['tokens'], b['tokens']) for a, b in zip(batches, pipeline.eval_batches(1000)))
  assert pipeline.stats['eval_tokens'] == int((tokens != pipeline.tokenizer.pad_id).sum())


def test_tokenizer_is_trained_on_train_split_and_cached(corpus_dir, empty_cache):
  del empty_cache  # counts the tokenizers in the cache
  config = make_config(f'text:{corpus_dir}/*.txt', model__vocab_size=400)
  first = data_pipeline(config)
  cached = list((sources.cache_dir() / 'tokenizers').glob('*.model'))
  assert len(cached) == 1 and first.tokenizer.vocab_size == 400
  mtime = cached[0].stat().st_mtime_ns
  second = data_pipeline(config)
  assert second.tokenizer.to_bytes() == first.tokenizer.to_bytes()
  assert cached[0].stat().st_mtime_ns == mtime and len(list(cached[0].parent.glob('*.model'))) == 1


def test_given_tokenizer_is_used_as_is(config, pipeline, tmp_path):
  cfg = make_config(config.data.source, tmp_path / 'missing.model')  # ignored: the checkpoint's one wins
  resumed = data_pipeline(cfg, tokenizer=pipeline.tokenizer)
  assert np.array_equal(next(resumed.train_iterator())['tokens'], next(pipeline.train_iterator())['tokens'])


def test_no_eval_split(config):
  data = data_pipeline(make_config(config.data.source, config.data.tokenizer, data__eval_fraction=0.0))
  assert data.stats['eval_documents'] == data.stats['eval_rows'] == 0 and data.eval_batches(5) == []
  assert data.stats['train_documents'] == data.stats['documents']


def test_bad_files_are_counted_not_fatal(tmp_path, tokenizer_path):
  (tmp_path / 'a.txt').write_text(topics.topics['if'] * 3)
  (tmp_path / 'b.txt').write_text('')
  (tmp_path / 'c.txt').write_bytes(b'\x00\x01binary')
  (tmp_path / 'd.txt').write_bytes('latin-1 caf\xe9 '.encode('latin-1') * 200)
  (tmp_path / 'e.txt').write_text('x' * 5000)
  data = data_pipeline(make_config(f'text:{tmp_path}/*.txt', tokenizer_path, data__max_doc_chars=2000))
  s = data.stats
  assert (s['files'], s['skipped_empty'], s['skipped_binary'], s['replaced_undecodable']) == (5, 1, 1, 1)
  assert s['split_overlong'] == 2 and s['documents'] == s['train_documents'] + s['eval_documents']


def test_worker_processes_give_the_same_batches_and_state(config, pipeline):
  workers = data_pipeline(make_config(config.data.source, config.data.tokenizer, data__num_workers=2))
  it = workers.train_iterator()
  try:
    got = take(it, 4)
    assert it.get_state() == {'step': 4, 'fingerprint': pipeline.fingerprint}
  finally:
    it.close()
  for a, b in zip(take(pipeline.train_iterator(), 4), got):
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_default_source_end_to_end():
  data = data_pipeline(make_config('builtin:stdlib-docs', model__vocab_size=1000, data__eval_fraction=0.02))
  assert data.stats['documents'] > 500 and data.stats['eval_documents'] > 0
  batch = next(data.train_iterator())
  assert batch['tokens'].shape == (BATCH, SEQ_LEN) and batch['tokens'].max() < 1000



def test_config_errors_name_the_field(config, tmp_path, tokenizer_path):
  source = config.data.source
  assert build_data_error(make_config(source, tmp_path / 'nope.model')).startswith('data.tokenizer: no such file')
  msg = build_data_error(make_config(source, tokenizer_path, model__vocab_size=300))
  assert msg.startswith('data.tokenizer:') and 'model.vocab_size 300' in msg
  msg = build_data_error(make_config(source, tokenizer_path, train__batch_size=6), process_count=4)
  assert msg == 'train.batch_size: 6 is not divisible by the process count 4'
  msg = build_data_error(make_config(source, tokenizer_path, train__batch_size=100_000))
  assert msg.startswith('train.batch_size: 100000 exceeds') and 'data.source' in msg
  assert build_data_error(make_config('web:example.com')).startswith('data.source: unknown scheme')
  assert build_data_error(make_config(f'jsonl:{tmp_path}/*.jsonl')).startswith('data.source: no files match')
  assert build_data_error(make_config(source, tokenizer_path, data__eval_fraction=1.0)).startswith('data.eval_fraction')
  assert build_data_error(make_config(source, tokenizer_path, data__seq_len=1)).startswith('data.seq_len')
  del_config = make_config(source, tokenizer_path)
  del del_config.data['num_workers']
  assert build_data_error(del_config) == 'data.num_workers: missing from the config'


def test_empty_corpus_names_the_source(tmp_path, tokenizer_path):
  (tmp_path / 'empty.txt').write_text('\n\n')
  (tmp_path / 'binary.txt').write_bytes(b'\x00' * 10)
  msg = build_data_error(make_config(f'text:{tmp_path}/*.txt', tokenizer_path))
  assert msg.startswith(f"data.source: no documents in 'text:{tmp_path}/*.txt'")
  assert 'skipped_empty 1' in msg and 'skipped_binary 1' in msg
