"""Data fingerprints: what a process read (counts and a hash), equal for equal corpora in every process, different
for any changed document; a resume on a changed corpus stops with one line unless data.allow_source_change."""
import json
import logging
import os
import subprocess
import sys

import pytest
from pydoc_data import topics

from pretrain import train
from pretrain.data import fingerprint
from pretrain.data.prepared_writer import WriteOptions, write_prepared
from pretrain.data.tokenizer import train_sentencepiece
from pretrain.runtime.errors import ConfigError
from tests.helpers import MLM_CONFIG, ROOT, TINY_OVERRIDES, data_pipeline, tiny_config

DOCS = 12


def _write_corpus(root, count=DOCS):
  root.mkdir(parents=True, exist_ok=True)
  for i, key in enumerate(sorted(topics.topics)[:count]):
    (root / f'{i:02d}.txt').write_text(topics.topics[key])
  return f'text:{root}/*.txt'


@pytest.fixture(scope='module')
def tokenizer_path(tmp_path_factory):
  path = tmp_path_factory.mktemp('tok') / 'spm.model'
  train_sentencepiece([topics.topics[k] for k in sorted(topics.topics)[:DOCS]], 400, path)
  return path


def _config(source, tokenizer_path, **data):
  config = tiny_config()
  config.data.update(source=source, tokenizer=str(tokenizer_path), eval_fraction=0.2, **data)
  return config


def _fingerprint(source, tokenizer_path, **kwargs):
  return data_pipeline(_config(source, tokenizer_path), **kwargs).fingerprint


def test_same_corpus_same_fingerprint_any_changed_document_another_hash(tmp_path, tokenizer_path):
  source = _write_corpus(tmp_path / 'corpus')
  base = _fingerprint(source, tokenizer_path)
  assert json.loads(json.dumps(base)) == base and set(base) == {*fingerprint.COUNTS, 'hash'}
  assert base['documents'] == DOCS and base['eval_rows'] > 0  # some documents are held out: their change counts too
  assert _fingerprint(_write_corpus(tmp_path / 'copy'), tokenizer_path) == base  # same texts elsewhere
  assert [_fingerprint(source, tokenizer_path, process_index=p, process_count=2) for p in (0, 1)] == [base, base]
  hashes = {base['hash']}
  for path in sorted((tmp_path / 'corpus').glob('*.txt')):  # one character of one document at a time
    text = path.read_text()
    path.write_text(text.replace('e', 'a', 1))
    hashes.add(_fingerprint(source, tokenizer_path)['hash'])
    path.write_text(text)
  assert len(hashes) == DOCS + 1
  assert _fingerprint(source, tokenizer_path) == base


def test_a_prepared_source_gives_every_process_the_same_fingerprint(tmp_path, tokenizer_path):
  def prepare(name):
    source = _write_corpus(tmp_path / name)
    write_prepared(WriteOptions(source, str(tokenizer_path), 32, eval_fraction=0.2), str(tmp_path / f'{name}-32'))
    return f'prepared:{tmp_path}/{name}-32'

  source = prepare('corpus')
  ours = [_fingerprint(source, '', process_index=p, process_count=2) for p in (0, 1)]
  assert ours[0] == ours[1] == _fingerprint(source, '')
  in_memory = _fingerprint(f'text:{tmp_path}/corpus/*.txt', tokenizer_path)
  assert {k: ours[0][k] for k in fingerprint.COUNTS} == {k: in_memory[k] for k in fingerprint.COUNTS}
  (tmp_path / 'changed').mkdir()
  (tmp_path / 'changed' / 'extra.txt').write_text(topics.topics[sorted(topics.topics)[DOCS]])
  assert _fingerprint(prepare('changed'), '')['hash'] != ours[0]['hash']


def test_processes_that_disagree_are_named_in_one_line():
  a, b = ({'documents': n, 'train_rows': 10 * n, 'train_tokens': 300 * n, 'eval_rows': 1, 'hash': h * 32}
          for n, h in ((12, 'a'), (11, 'b')))
  fingerprint.check_processes_agree('text:c/*.txt', [a, a, a])
  with pytest.raises(ConfigError) as e:
    fingerprint.check_processes_agree('text:c/*.txt', [a, b, a, a, b])
  assert str(e.value) == (
      "data.source: processes disagree on what 'text:c/*.txt' holds: processes 0, 2-3 read 12 documents / 120 train "
      '+ 1 eval rows (hash aaaaaaaaaaaa), processes 1, 4 read 11 documents / 110 train + 1 eval rows (hash '
      'bbbbbbbbbbbb); every process must see the same files')


def test_iterator_state_resumes_only_on_the_same_rows(tmp_path, tokenizer_path, caplog):
  source = _write_corpus(tmp_path / 'corpus')
  it = data_pipeline(_config(source, tokenizer_path)).train_iterator()
  next(it)
  state = json.loads(json.dumps(it.get_state()))
  (tmp_path / 'corpus' / 'extra.txt').write_text(topics.topics[sorted(topics.topics)[DOCS]])
  changed = data_pipeline(_config(source, tokenizer_path))
  with pytest.raises(ConfigError, match=r"^data\.source: .* at step 1 .*documents 12 -> 13.*allow_source_change"):
    changed.train_iterator().set_state(state)
  changed.train_iterator().set_state({'step': 1})  # an older checkpoint's state has no fingerprint: not checked
  allowed = data_pipeline(_config(source, tokenizer_path, allow_source_change=True)).train_iterator()
  with caplog.at_level(logging.WARNING):
    allowed.set_state(state)
  assert 'documents 12 -> 13' in caplog.text and 'going on from step 1' in caplog.text
  assert allowed.get_state() == {'step': 1, 'fingerprint': changed.fingerprint}


def test_resuming_on_a_changed_corpus_stops_unless_the_change_is_allowed(tmp_path, tokenizer_path, caplog):
  source = _write_corpus(tmp_path / 'corpus')
  workdir = tmp_path / 'run'
  config = _config(source, tokenizer_path)
  config.train.update(steps=4, stop_at_step=2, log_every=1, eval_every=100, eval_batches=1, checkpoint_every=100)
  train.run(config, str(workdir))
  (tmp_path / 'corpus' / '03.txt').write_text('a changed document\n' * 20)
  args = ['--config', MLM_CONFIG, *TINY_OVERRIDES, '--workdir', str(workdir), f'--config.data.source={source}',
          f'--config.data.tokenizer={tokenizer_path}', '--config.data.eval_fraction=0.2', '--config.train.steps=4',
          '--config.train.warmup_steps=2']
  result = subprocess.run([sys.executable, '-m', 'pretrain', *args], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=600)
  assert result.returncode == 2, result.stderr[-3000:]
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: data.source: '{source}' is not what the checkpoint at step 2 trained on (")
  assert 'hash ' in line and 'set data.allow_source_change=true' in line
  assert os.listdir(workdir / 'checkpoints') == ['2']
  config.data.allow_source_change, config.train.stop_at_step = True, 0
  with caplog.at_level(logging.WARNING):
    assert train.run(config, str(workdir))['step'] == 4
  assert 'data.allow_source_change=true: going on from step 2 with the new rows' in caplog.text
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']
