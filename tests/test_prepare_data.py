"""tools.prepare_data -> ArrayRecord shards -> `prepared:DIR` batches: the same rows and batches as in memory."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from pydoc_data import topics

from pretrain import train
from pretrain.data.tokenizer import Tokenizer, train_sentencepiece
from pretrain.data.packing import pack
from pretrain.data.split import split_eval
from tests.helpers import build_data_error, data_pipeline, tiny_config
from tools import prepare_data

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEQ_LEN, BATCH, EVAL_FRACTION = 32, 8, 0.1


@pytest.fixture(scope='module')
def corpus_dir(tmp_path_factory):
  """30 real reference texts as files, a duplicate, an empty file and a binary one."""
  root = tmp_path_factory.mktemp('corpus')
  for i, key in enumerate(sorted(topics.topics)[:30]):
    (root / f'{i:02d}.txt').write_text(topics.topics[key])
  (root / '97_duplicate.txt').write_text(topics.topics[sorted(topics.topics)[3]])
  (root / '98_empty.txt').write_text('\n \n')
  (root / '99_binary.txt').write_bytes(b'\x00\x01')
  return root


@pytest.fixture(scope='module')
def tokenizer_path(corpus_dir, tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'spm.model'
  train_sentencepiece([p.read_text() for p in sorted(corpus_dir.glob('[0-9][0-9].txt'))], 500, path)
  return path


def _prepare_cli(*args):
  return subprocess.run([sys.executable, '-m', 'tools.prepare_data', *map(str, args)], cwd=ROOT, env=dict(os.environ),
                        capture_output=True, text=True, timeout=300)


@pytest.fixture(scope='module')
def prepared_dir(corpus_dir, tokenizer_path, tmp_path_factory):
  out = tmp_path_factory.mktemp('prepared') / 'topics-32'
  result = _prepare_cli('--source', f'text:{corpus_dir}/*.txt', '--tokenizer', tokenizer_path, '--seq_len', SEQ_LEN,
                        '--out', out, '--eval_fraction', EVAL_FRACTION, '--records_per_shard', 500, '--workers', 2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'prepare_data: 31 documents' in result.stdout and f'wrote {out}' in result.stdout
  return out


def make_config(source, tokenizer='', **data_overrides):
  config = tiny_config()
  assert (config.data.seq_len, config.train.batch_size) == (SEQ_LEN, BATCH)
  config.data.source, config.data.tokenizer, config.data.eval_fraction = source, str(tokenizer), EVAL_FRACTION
  for key, value in data_overrides.items():
    config.data[key] = value
  return config


@pytest.fixture(scope='module')
def in_memory(corpus_dir, tokenizer_path):
  return data_pipeline(make_config(f'text:{corpus_dir}/*.txt', tokenizer_path))


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_same_batches(expected, got):
  assert len(expected) == len(got)
  for a, b in zip(expected, got):
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_prepared_rows_equal_the_in_memory_pack_bit_for_bit(prepared_dir, in_memory, corpus_dir, tokenizer_path):
  manifest = json.loads((prepared_dir / 'prepared.json').read_text())
  assert (manifest['seq_len'], manifest['token_dtype']) == (SEQ_LEN, '<u2')
  assert manifest['source'] == f'text:{corpus_dir}/*.txt'
  assert len(manifest['shards']['train']) == -(-in_memory.stats['train_rows'] // 500) > 1
  assert (prepared_dir / 'tokenizer.model').read_bytes() == tokenizer_path.read_bytes()
  counts = manifest['counts']
  assert {k: counts[k] for k in in_memory.stats if k != 'vocab_size'} == {
      k: v for k, v in in_memory.stats.items() if k != 'vocab_size'}
  assert (counts['skipped_empty'], counts['skipped_binary'], counts['documents']) == (1, 1, 31)
  data = data_pipeline(make_config(f'prepared:{prepared_dir}'))
  for name in ('train_rows', 'eval_rows'):
    expected, rows = getattr(in_memory, name), getattr(data, name)
    tokens, kind = rows.read(np.arange(len(rows)))
    assert len(rows) > 0 and np.array_equal(tokens, expected.tokens) and np.array_equal(kind, expected.kind)


@pytest.mark.parametrize('process_count', [1, 2])
def test_batches_equal_the_in_memory_source_for_any_process_count(prepared_dir, in_memory, process_count):
  steps = in_memory.stats['train_rows'] // BATCH + 3  # into the second, reshuffled epoch
  expected = take(in_memory.train_iterator(), steps)
  parts = [data_pipeline(make_config(f'prepared:{prepared_dir}'), process_index=p, process_count=process_count)
           for p in range(process_count)]
  local = [take(part.train_iterator(), steps) for part in parts]
  assert all(b['tokens'].shape == (BATCH // process_count, SEQ_LEN) for b in local[-1])
  joined = [{k: np.concatenate([lb[step][k] for lb in local]) for k in expected[0]} for step in range(steps)]
  assert_same_batches(expected, joined)
  evals = [{k: np.concatenate([e[k] for e in per_step]) for k in per_step[0]}
           for per_step in zip(*(part.eval_batches(100) for part in parts))]
  assert_same_batches(in_memory.eval_batches(100), evals)


def test_grain_worker_processes_give_the_same_batches(prepared_dir, in_memory):
  data = data_pipeline(make_config(f'prepared:{prepared_dir}', num_workers=2))
  it = data.train_iterator()
  try:
    got = take(it, 4)
    assert it.get_state() == {'step': 4, 'fingerprint': data.fingerprint}
  finally:
    it.close()
  assert_same_batches(take(in_memory.train_iterator(), 4), got)


def test_resume_from_saved_iterator_state_gives_the_same_next_batches(prepared_dir):
  config = make_config(f'prepared:{prepared_dir}')
  it = data_pipeline(config).train_iterator()
  take(it, 5)
  state = json.loads(json.dumps(it.get_state()))
  expected = take(it, 3)
  resumed = data_pipeline(config).train_iterator()
  resumed.set_state(state)
  assert_same_batches(expected, take(resumed, 3))


def test_split_fallback_holds_out_one_document_like_split_eval(corpus_dir, tokenizer_path, tmp_path, capsys):
  """No text hashes below 1e-12: split_eval holds out the smallest; the preparer reads the source twice."""
  source = f'text:{corpus_dir}/*.txt'
  argv = ['--source', source, '--tokenizer', str(tokenizer_path), '--seq_len', '48', '--out', str(tmp_path / 'out'),
          '--eval_fraction', '1e-12', '--workers', '1']
  assert prepare_data.main(argv) == 0
  assert 'reading again with the fallback rule' in capsys.readouterr().out
  docs = [p.read_text() for p in sorted(corpus_dir.glob('[0-9][0-9].txt'))] + [topics.topics[sorted(topics.topics)[3]]]
  held = split_eval(docs, 1e-12)
  assert held.sum() == 1
  tokenizer = Tokenizer.from_file(tokenizer_path)
  data = data_pipeline(make_config(f'prepared:{tmp_path / "out"}', seq_len=48))
  for rows, split_docs in ((data.train_rows, [d for d, h in zip(docs, held) if not h]),
                           (data.eval_rows, [d for d, h in zip(docs, held) if h])):
    expected = pack(split_docs, tokenizer, 48)
    assert np.array_equal(rows.read(np.arange(len(rows)))[0], expected.tokens)


def _cli_error(argv, capsys) -> str:
  assert prepare_data.main([str(a) for a in argv]) == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error: ')
  return lines[0][len('error: '):]


def test_prepare_cli_errors_are_one_line_exit_2(corpus_dir, tokenizer_path, prepared_dir, tmp_path, capsys):
  base = ['--tokenizer', tokenizer_path, '--seq_len', SEQ_LEN, '--workers', 1]
  assert _cli_error(['--source', f'text:{tmp_path}/none/*.txt', *base, '--out', tmp_path / 'a'],
                    capsys).startswith("--source: no files match")
  assert not (tmp_path / 'a').exists()
  assert _cli_error(['--source', f'text:{corpus_dir}/*.txt', *base, '--out', prepared_dir],
                    capsys).startswith(f'--out: {prepared_dir} exists and is not empty')
  assert _cli_error(['--source', 'builtin:nope', *base, '--out', tmp_path / 'b'],
                    capsys).startswith('--source: unknown builtin corpus')
  assert _cli_error(['--source', f'text:{corpus_dir}/*.txt', '--tokenizer', tmp_path / 'no.model', '--seq_len', 32,
                     '--out', tmp_path / 'c'], capsys).startswith('--tokenizer: no such file')
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'blank.txt').write_text('  \n')
  assert _cli_error(['--source', f'text:{tmp_path}/empty/*.txt', *base, '--out', tmp_path / 'd'],
                    capsys).startswith('--source: no documents in')
  assert not (tmp_path / 'd').exists() and not list(tmp_path.glob('.d.*'))  # nothing half-written is left
  assert _cli_error(['--source', f'text:{corpus_dir}/*.txt', *base[:2], '--seq_len', 1, '--out', tmp_path / 'e'],
                    capsys) == '--seq_len: must be >= 2, got 1'



def test_training_on_a_bad_prepared_source_names_the_field(prepared_dir, tokenizer_path, tmp_path):
  source = f'prepared:{prepared_dir}'
  msg = build_data_error(make_config(source, seq_len=64))
  assert msg.startswith('data.seq_len: 64 differs from the seq_len 32')
  other = tmp_path / 'other.model'
  train_sentencepiece([topics.topics[k] for k in sorted(topics.topics)[40:80]], 400, other)
  assert build_data_error(make_config(source, other)).startswith(f"data.tokenizer: '{other}' is not the tokenizer")
  assert data_pipeline(make_config(source, tokenizer_path)).stats['train_rows'] > 0  # the same model is fine
  msg = build_data_error(make_config(source), tokenizer=Tokenizer.from_file(other))  # a checkpoint's tokenizer
  assert msg.startswith(f"data.source: '{source}' was tokenized with")
  assert build_data_error(make_config(f'prepared:{tmp_path}/none')).startswith(
      f"data.source: 'prepared:{tmp_path}/none': no such directory")
  broken = tmp_path / 'broken'
  broken.mkdir()
  for path in prepared_dir.iterdir():
    (broken / path.name).write_bytes(path.read_bytes())
  shard = broken / json.loads((broken / 'prepared.json').read_text())['shards']['train'][1]
  shard.write_bytes(shard.read_bytes()[:1000])  # truncated
  assert build_data_error(make_config(f'prepared:{broken}')).startswith(
      f"data.source: 'prepared:{broken}': cannot read its train shards")
  (broken / 'prepared.json').write_text('{"format": ')
  assert build_data_error(make_config(f'prepared:{broken}')).startswith(
      f"data.source: 'prepared:{broken}': cannot read {broken}/prepared.json")


def test_pretrain_cli_rejects_a_seq_len_mismatch_in_one_line(prepared_dir, tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'pretrain', '--config', 'configs/pretrain_mlm.py:size=tiny', '--workdir', str(tmp_path),
       f'--config.data.source=prepared:{prepared_dir}', '--config.data.seq_len=64'],
      cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith('error: data.seq_len: 64 differs from the seq_len 32')
  assert 'Traceback' not in result.stderr


def test_pretraining_on_a_prepared_corpus_writes_a_checkpoint(prepared_dir, tmp_path):
  config = make_config(f'prepared:{prepared_dir}')
  config.train.steps, config.train.log_every, config.train.checkpoint_every = 3, 1, 3
  config.train.eval_every = 100  # eval batches are checked above; skipping them here saves a compilation
  train.run(config, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)
  assert (tmp_path / 'checkpoints' / '3').is_dir()
  assert (tmp_path / 'tokenizer.model').read_bytes() == (prepared_dir / 'tokenizer.model').read_bytes()
