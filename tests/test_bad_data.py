"""Bad data through the real command lines: every bad file or record is skipped and counted, or the run stops
with one `error:` line naming the source; never a traceback. One directory of bad files (two 100 MB lines
included) is shared by all tests; the tokenizer is trained once on it, by `python -m tools.train_tokenizer`."""

import dataclasses
import json
import os
import pathlib
import random
import re
import subprocess
import sys
import tempfile

import pytest
from pydoc_data import topics

from finetune import data as glue_data
from finetune.tasks import TASKS
from pretrain.data import sources
from pretrain.runtime.errors import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL_TOKENIZER = ROOT / 'tests' / 'data' / 'pre_redesign' / 'tokenizer.model'  # any would do
HUGE_CHARS = 100_000_000
MAX_DOC_CHARS = 100_000  # the default of data.max_doc_chars and the tools' --max_doc_chars
GOOD_TOPICS = sorted(topics.topics)[:4]
# A tiny model and a short run: the tests are about the data, not the training.
TINY = ['--config.model.num_layers=1', '--config.model.hidden_size=32', '--config.model.num_heads=2',
        '--config.model.mlp_dim=64', '--config.model.vocab_size=512', '--config.data.seq_len=32',
        '--config.train.batch_size=8', '--config.train.steps=2', '--config.train.warmup_steps=1',
        '--config.train.log_every=1', '--config.train.eval_every=2', '--config.train.eval_batches=1']
# JSONL lines that are not a JSON object with a string `text`.
BAD_RECORDS = [json.dumps({'title': 'no text field'}), json.dumps({'text': 42}), json.dumps({'text': None}),
               '{not json', '[' * 100_000, json.dumps(['a', 'list'])]
TRUNCATED = '{"text": "a last line cut off in the mid'


def _random_bytes(seed: int, size: int) -> bytes:
  data = bytearray(random.Random(seed).randbytes(size))
  data[::97] = bytes(len(data[::97]))  # NULs throughout
  return bytes(data).replace(b'\n', b' ')  # one line


def _write_huge(path: pathlib.Path, prefix: bytes = b'', suffix: bytes = b'') -> str:
  """A single line of HUGE_CHARS characters (words and spaces, no newline); returns its text."""
  text = ('lorem ipsum dolor sit amet consectetur adipiscing elit ' * (HUGE_CHARS // 56 + 1))[:HUGE_CHARS]
  with open(path, 'wb') as f:
    f.write(prefix)
    f.write(text.encode())
    f.write(suffix)
  return text


@pytest.fixture(scope='module')
def bad_dir(tmp_path_factory):
  """text: 9 files matched by *.txt (2 blank, 1 binary, 1 latin-1, 1 huge line, 1 dangling link, 3 good) and a
  directory x.txt/; jsonl: 6 files matched by *.jsonl (bad records, latin-1, binary, empty, huge, dangling) and
  x.jsonl/; allbad/: only empty, binary and dangling files of both kinds."""
  root = tmp_path_factory.mktemp('bad')
  for i, key in enumerate(GOOD_TOPICS[:3]):
    (root / f'good{i}.txt').write_text(topics.topics[key])
  (root / 'empty.txt').write_bytes(b'')
  (root / 'blank.txt').write_bytes(b' \n\t\r\n  ')
  (root / 'binary.txt').write_bytes(_random_bytes(0, 4096))
  (root / 'latin1.txt').write_bytes('Crème brûlée à la carte, señor.\n'.encode('latin-1') * 20)
  huge = _write_huge(root / 'huge.txt')
  records = [json.dumps({'text': topics.topics[GOOD_TOPICS[3]]}), *BAD_RECORDS, json.dumps({'text': '  \n '}),
             json.dumps({'text': 'a good record after the bad ones'}), TRUNCATED]
  (root / 'records.jsonl').write_text('\n'.join(records))  # the last line has no newline
  (root / 'latin1.jsonl').write_bytes('{"text": "café crème"}\n'.encode('latin-1'))
  (root / 'binary.jsonl').write_bytes(_random_bytes(1, 4096))
  (root / 'empty.jsonl').write_bytes(b'')
  _write_huge(root / 'huge.jsonl', b'{"text": "', b'"}\n')
  for ext in ('txt', 'jsonl'):
    (root / f'dangling.{ext}').symlink_to(root / f'missing.{ext}')
    (root / f'x.{ext}').mkdir()  # a directory named like a file: never a match
  allbad = root / 'allbad'
  allbad.mkdir()
  (allbad / 'empty.txt').write_bytes(b'')
  (allbad / 'blank.txt').write_bytes(b'\n \n')
  (allbad / 'binary.txt').write_bytes(_random_bytes(2, 1024))
  (allbad / 'dangling.txt').symlink_to(root / 'missing.txt')
  (allbad / 'bad.jsonl').write_text('\n'.join([*BAD_RECORDS, TRUNCATED]))
  chunks = len(sources.split_text(huge, MAX_DOC_CHARS))
  del huge
  expected = {
      'text': dict(files=9, documents=3 + 1 + chunks, skipped_empty=2, skipped_binary=1, skipped_unreadable=1,
                   skipped_bad_records=0, replaced_undecodable=1, split_overlong=1),
      'jsonl': dict(files=6, documents=2 + 1 + chunks, skipped_empty=1, skipped_binary=0, skipped_unreadable=1,
                    skipped_bad_records=len(BAD_RECORDS) + 2, replaced_undecodable=1, split_overlong=1)}
  return root, expected


@dataclasses.dataclass
class Run:
  returncode: int
  stdout: str
  stderr: str
  peak_mb: float  # the process' peak resident memory


# Runs `python -m MODULE ARGS` and, at exit, writes the process' own peak resident memory (VmHWM, which exec
# resets) to $PEAK_FILE. The kernel's ru_maxrss would not do: it keeps the high-water mark of the forking test
# process, which is gigabytes once a worker has run other tests.
_PEAK_WRAPPER = """
import atexit, os, runpy, sys
def _peak():
  with open('/proc/self/status') as status, open(os.environ['PEAK_FILE'], 'w') as out:
    out.write(next(line for line in status if line.startswith('VmHWM:')).split()[1])
atexit.register(_peak)
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)
"""


def _cli(module: str, *args) -> Run:
  """`python -m module args`, with the process' peak memory."""
  env = dict(os.environ, JAX_PLATFORMS='cpu')  # the module's fresh cache carries over
  env.pop('XLA_FLAGS', None)  # one CPU device, not conftest's 8: these runs are about data, and compile twice as fast
  with tempfile.TemporaryDirectory() as tmp:
    env['PEAK_FILE'] = peak_file = os.path.join(tmp, 'peak_kb')
    proc = subprocess.run([sys.executable, '-c', _PEAK_WRAPPER, module, *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, check=False)
    peak_kb = int(pathlib.Path(peak_file).read_text()) if os.path.exists(peak_file) else float('nan')
  return Run(proc.returncode, proc.stdout, proc.stderr, peak_kb / 1024)


def _counts(text: str) -> dict[str, int]:
  """SourceStats fields of `key=value` pairs in a log line."""
  fields = sources.SourceStats().as_dict()
  return {k: int(v) for k, v in re.findall(r'\b(\w+)=(\d+)\b', text) if k in fields}


def _assert_ok(result: Run, max_peak_mb: float) -> None:
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr + result.stdout
  assert result.peak_mb < max_peak_mb, f'peak memory {result.peak_mb:.0f} MB'


def _assert_one_error_line(result: Run, start: str) -> str:
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr + result.stdout
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1], result.stderr[-3000:]
  assert errors[0].startswith(start), errors[0]
  return errors[0]


@pytest.fixture(scope='module')
def tokenizer(bad_dir, tmp_path_factory):
  """`python -m tools.train_tokenizer` on the bad text files (the huge line included); its stdout and model."""
  root, _ = bad_dir
  out = tmp_path_factory.mktemp('tok') / 'spm.model'
  result = _cli('tools.train_tokenizer', '--source', f'text:{root}/*.txt', '--vocab_size', 512, '--out', out)
  _assert_ok(result, 3000)  # SentencePiece takes ~20 bytes per character of its 100 MB input
  return result, out


def test_train_tokenizer_counts_every_bad_text_file(bad_dir, tokenizer):
  _, expected = bad_dir
  result, out = tokenizer
  wrote = next(line for line in result.stdout.splitlines() if line.startswith(f'wrote {out}'))
  assert _counts(wrote) == expected['text'], wrote
  assert 'dangling.txt: skipped, cannot read it' in result.stderr


@pytest.mark.parametrize('scheme,ext', [('text', 'txt'), ('jsonl', 'jsonl')])
def test_pretrain_cli_skips_and_counts_bad_files_and_records(bad_dir, tokenizer, tmp_path, scheme, ext):
  root, expected = bad_dir
  source = f'{scheme}:{root}/*.{ext}'
  result = _cli('pretrain', '--config', 'configs/pretrain_mlm.py:size=tiny', '--workdir', tmp_path, *TINY,
                f'--config.data.source={source}', f'--config.data.tokenizer={tokenizer[1]}')
  _assert_ok(result, 1500)  # jax ~500 MB, documents and rows ~500 MB
  line = next(line for line in result.stderr.splitlines() if f'data {source}: ' in line)
  assert _counts(line) == expected[scheme], line
  assert [json.loads(l)['step'] for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()][-1] == 2


def test_prepare_data_counts_bad_records_in_its_manifest(bad_dir, tokenizer, tmp_path):
  root, expected = bad_dir
  result = _cli('tools.prepare_data', '--source', f'jsonl:{root}/*.jsonl', '--tokenizer', tokenizer[1],
                '--seq_len', 512, '--out', tmp_path / 'out', '--workers', 2)  # long rows: fewer records to write
  _assert_ok(result, 1000)
  counts = json.loads((tmp_path / 'out' / 'prepared.json').read_text())['counts']
  assert {k: counts[k] for k in expected['jsonl']} == expected['jsonl']
  read = next(line for line in result.stdout.splitlines() if line.startswith('prepare_data: read jsonl:'))
  assert _counts(read) == expected['jsonl'], read


@pytest.mark.parametrize('tool,source,start', [
    ('pretrain', 'text:{root}/allbad/*.txt', "error: data.source: no documents in 'text:{root}/allbad/*.txt' after "
     'filtering (files 4, skipped_empty 2, skipped_binary 1, skipped_unreadable 1)'),
    ('tools.train_tokenizer', 'jsonl:{root}/allbad/*.jsonl',
     f"error: --source: no documents in 'jsonl:{{root}}/allbad/*.jsonl' after filtering (files 1, "
     f'skipped_bad_records {len(BAD_RECORDS) + 1})'),
    ('tools.prepare_data', 'text:{root}/allbad/*.txt', "error: --source: no documents in 'text:{root}/allbad/*.txt'"),
    ('tools.prepare_data', 'jsonl:{root}/x.*', "error: --source: no files match 'jsonl:{root}/x.*'"),  # directories
])
def test_a_source_with_nothing_readable_is_one_error_line(bad_dir, tmp_path, tool, source, start):
  root, _ = bad_dir
  source, start = source.format(root=root), start.format(root=root)
  args = {'pretrain': ['--config', 'configs/pretrain_mlm.py:size=tiny', '--workdir', tmp_path, *TINY,
                       f'--config.data.source={source}'],
          'tools.train_tokenizer': ['--source', source, '--vocab_size', 512, '--out', tmp_path / 'spm.model'],
          'tools.prepare_data': ['--source', source, '--tokenizer', SMALL_TOKENIZER, '--seq_len', 32,
                                 '--out', tmp_path / 'out']}[tool]
  _assert_one_error_line(_cli(tool, *args), start)
  assert not (tmp_path / 'out').exists() and not (tmp_path / 'spm.model').exists()


def test_a_file_deleted_after_the_glob_is_skipped_and_counted(tmp_path):
  for name in ('a', 'b', 'c'):
    (tmp_path / f'{name}.txt').write_text(f'document {name}')
    (tmp_path / f'{name}.jsonl').write_text(json.dumps({'text': f'record {name}'}) + '\n')
  for scheme, ext in (('text', 'txt'), ('jsonl', 'jsonl')):
    stats = sources.SourceStats()
    docs = sources.read_documents(f'{scheme}:{tmp_path}/*.{ext}', stats=stats)
    (tmp_path / f'b.{ext}').unlink()  # listed by the glob, gone when read
    assert len(list(docs)) == 2 and (stats.files, stats.skipped_unreadable) == (3, 1)


def test_a_damaged_stdlib_docs_cache_is_rebuilt(monkeypatch, tmp_path):
  monkeypatch.setenv('FLAX_PRETRAIN_CACHE', str(tmp_path))
  monkeypatch.setattr(sources, '_extract_stdlib_docs', lambda: ['extracted'])
  assert sources.stdlib_docs() == ['extracted']  # and cached
  (cached,) = tmp_path.glob('stdlib-docs-*.jsonl')
  for damage in (b'{"text": "cut sh', b'{"no text": 1}\n', b'[1]\n', b'{"text": 1}\n', b'\xff\n', b''):
    cached.write_bytes(damage)
    assert sources.stdlib_docs() == ['extracted'] and cached.read_text() == '{"text": "extracted"}\n'


@pytest.mark.parametrize('content,error', [
    (b'', 'empty file'), (b'\n \n', 'empty file'),
    (random.Random(3).randbytes(100_000), "no column 'sentence' in the header"),
    (b'sentence\tlabel\n', 'no examples'),
    ('sentence\tlabel\nfine\t1\nbad\tlabel\n'.encode(), "SST-2/dev.tsv:3: label 'label' is not one of"),
    (None, 'SST-2/dev.tsv: missing'),  # a dangling symlink
])
def test_a_bad_glue_file_is_an_error_naming_it(tmp_path, content, error):
  (tmp_path / 'SST-2').mkdir()
  path = tmp_path / 'SST-2' / 'dev.tsv'
  if content is None:
    path.symlink_to(tmp_path / 'nowhere.tsv')
  else:
    path.write_bytes(content)
  with pytest.raises(ConfigError) as e:
    glue_data.read_split(tmp_path, TASKS['sst2'], 'dev.tsv', with_labels=True)
  assert str(e.value).startswith(str(path)) and error in str(e.value) and len(str(e.value)) < 400


def test_glue_rows_end_at_newlines_only(tmp_path):
  (tmp_path / 'SST-2').mkdir()
  (tmp_path / 'SST-2' / 'dev.tsv').write_bytes(b'sentence\tlabel\r\nform\x0cfeed\t1\r\n'
                                              b'line\xe2\x80\xa8sep caf\xe9\t0\n')
  examples = glue_data.read_split(tmp_path, TASKS['sst2'], 'dev.tsv', with_labels=True)
  assert examples.texts == [('form\x0cfeed',), ('line\u2028sep caf\ufffd',)] and examples.skipped == 0
