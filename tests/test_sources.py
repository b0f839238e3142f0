"""Text sources: every scheme, and every kind of bad input is either a one-line ConfigError or counted."""

import json
import sys
import textwrap

import pytest

from pretrain.data import sources
from pretrain.runtime.errors import ConfigError
from pretrain.data.sources import SourceStats, read_documents, split_text


def _read(source: str, **kwargs) -> tuple[list[str], SourceStats]:
  stats = SourceStats()
  return list(read_documents(source, stats=stats, **kwargs)), stats


def test_builtin_stdlib_docs_is_cached_per_python(tmp_path, monkeypatch):
  docs, stats = _read('builtin:stdlib-docs')
  assert stats.documents == len(docs) > 500
  assert sum(map(len, docs)) > 1_500_000
  assert any('Serialize ``obj`` to a JSON formatted ``str``' in d for d in docs)  # json.dumps
  assert any(d.startswith('The "if" statement') for d in docs)  # pydoc_data.topics
  cached = list(sources.cache_dir().glob('stdlib-docs-*.jsonl'))
  assert len(cached) == 1 and f'{sys.version_info.major}.{sys.version_info.minor}' in cached[0].name
  def extract_again():
    raise AssertionError('re-extracted instead of reading the cache')
  monkeypatch.setattr(sources, '_extract_stdlib_docs', extract_again)
  assert _read('builtin:stdlib-docs')[0] == docs


def test_text_one_document_per_file_in_sorted_order(tmp_path):
  (tmp_path / 'b.txt').write_text('second file\n\nblank line above is kept\n')
  (tmp_path / 'a.txt').write_text('first file')
  (tmp_path / 'c.txt').write_bytes(b'windows\r\nline ends\r\n')
  (tmp_path / 'ignored.md').write_text('not matched')
  docs, stats = _read(f'text:{tmp_path}/*.txt')
  assert docs == ['first file', 'second file\n\nblank line above is kept\n', 'windows\nline ends\n']
  assert stats.files == 3 and stats.documents == 3


def test_text_recursive_glob(tmp_path):
  (tmp_path / 'x' / 'y').mkdir(parents=True)
  (tmp_path / 'x' / 'y' / 'deep.txt').write_text('deep')
  assert _read(f'text:{tmp_path}/**/*.txt')[0] == ['deep']


def test_bad_text_files_are_skipped_or_repaired_and_counted(tmp_path):
  (tmp_path / '1_empty.txt').write_text('')
  (tmp_path / '2_blank.txt').write_text('  \n\t\n')
  (tmp_path / '3_latin1.txt').write_bytes('café au lait'.encode('latin-1'))
  (tmp_path / '4_binary.txt').write_bytes(b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR')
  (tmp_path / '5_good.txt').write_text('good text')
  docs, stats = _read(f'text:{tmp_path}/*.txt')
  assert docs == ['caf\ufffd au lait', 'good text']
  assert (stats.files, stats.skipped_empty, stats.replaced_undecodable, stats.skipped_binary) == (5, 2, 1, 1)


def test_overlong_documents_are_split_losslessly(tmp_path):
  paragraph = 'word ' * 30 + '\n'
  text = paragraph * 20  # 3020 chars
  (tmp_path / 'long.txt').write_text(text)
  (tmp_path / 'short.txt').write_text('short')
  docs, stats = _read(f'text:{tmp_path}/*.txt', max_doc_chars=1000)
  assert stats.split_overlong == 1 and stats.documents == len(docs) == 5
  chunks = docs[:4]
  assert ''.join(chunks) == text and all(len(c) <= 1000 for c in chunks)
  assert all(c.endswith('\n') for c in chunks)  # cut at line ends, not mid-word


def test_split_text_without_whitespace_cuts_hard():
  assert split_text('x' * 25, 10) == ['x' * 10, 'x' * 10, 'x' * 5]


def test_jsonl_reads_text_field_and_counts_bad_lines(tmp_path):
  lines = [
      json.dumps({'text': 'first doc\nwith a newline', 'id': 1}),
      '{not json',
      json.dumps({'title': 'no text field'}),
      json.dumps({'text': 42}),
      json.dumps(['a', 'list']),
      '',
      json.dumps({'text': '   '}),
      json.dumps({'text': 'ünïcode ok'}, ensure_ascii=False),
      '{"text": "lone \\ud800 surrogate, pair \\ud83d\\ude00 ok"}',
  ]
  path = tmp_path / 'data.jsonl'
  path.write_text('\n'.join(lines) + '\n')
  with open(path, 'ab') as f:
    f.write(b'{"text": "bad byte \xff here"}\n')
  docs, stats = _read(f'jsonl:{path}')
  assert docs == ['first doc\nwith a newline', 'ünïcode ok', 'lone \ufffd surrogate, pair 😀 ok',
                  'bad byte \ufffd here']
  assert (stats.skipped_bad_records, stats.skipped_empty, stats.replaced_undecodable) == (4, 1, 2)


@pytest.mark.parametrize('source', ['nope:thing', 'just-a-path.txt', 'http://x'])
def test_unknown_scheme_lists_known_ones(source):
  with pytest.raises(ConfigError) as e:
    read_documents(source)
  msg = str(e.value)
  assert msg.startswith(f"data.source: unknown source '{source}'") and 'text:, jsonl:' in msg
  assert '\n' not in msg


def test_unknown_builtin_corpus():
  with pytest.raises(ConfigError, match="data.source: unknown builtin corpus 'builtin:wiki'.*builtin:stdlib-docs"):
    read_documents('builtin:wiki')


def test_glob_matching_nothing_fails_at_call_time(tmp_path):
  with pytest.raises(ConfigError, match=f"^data.source: no files match 'text:{tmp_path}/\\*.txt'$"):
    read_documents(f'text:{tmp_path}/*.txt')  # no next(): the error is not deferred to iteration
  (tmp_path / 'dir.jsonl').mkdir()  # directories never count as matches
  with pytest.raises(ConfigError, match='--source: no files match'):
    read_documents(f'jsonl:{tmp_path}/*.jsonl', field='--source')


def test_bad_max_doc_chars():
  with pytest.raises(ConfigError, match='data.max_doc_chars'):
    read_documents('builtin:stdlib-docs', max_doc_chars=0)


@pytest.mark.timeout(60)  # offline, a download would retry for minutes: this guards against a hang
def test_tfds_unknown_dataset_fails_fast():
  with pytest.raises(ConfigError, match="^data.source: unknown TFDS dataset 'tfds:no_such_dataset_xyz'"):
    read_documents('tfds:no_such_dataset_xyz')


@pytest.mark.timeout(60)
def test_tfds_unprepared_dataset_fails_fast_without_download(tmp_path, monkeypatch):
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path))
  with pytest.raises(ConfigError, match="^data.source: TFDS dataset 'tfds:imdb_reviews' is not prepared in"):
    read_documents('tfds:imdb_reviews')
  assert not any(tmp_path.iterdir())  # nothing downloaded or created


_TINY_BUILDER = '''
import tensorflow_datasets as tfds

class FlaxPretrainTinyText(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({'text': tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples()}

  def _generate_examples(self):
    for i, text in enumerate(['first record', 'café\\nsecond', '   ']):
      yield i, {'text': text}
'''


def test_tfds_prepared_array_record_dataset(tmp_path, monkeypatch):
  package = tmp_path / 'flax_pretrain_tiny_tfds'
  package.mkdir()
  (package / '__init__.py').write_text(textwrap.dedent(_TINY_BUILDER))
  monkeypatch.syspath_prepend(str(tmp_path))
  import flax_pretrain_tiny_tfds  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / 'tfds'
  builder = flax_pretrain_tiny_tfds.FlaxPretrainTinyText(data_dir=str(data_dir), file_format='array_record')
  builder.download_and_prepare()
  monkeypatch.setenv('TFDS_DATA_DIR', str(data_dir))
  docs, stats = _read('tfds:flax_pretrain_tiny_text')
  assert docs == ['first record', 'café\nsecond'] and stats.skipped_empty == 1
