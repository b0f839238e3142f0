"""tools/movie_reviews_to_glue.py on a fake VADER archive: split and label rules, GLUE layout, source forms, errors."""
import io
import json
import pathlib
import subprocess
import sys
import tarfile

import pytest

from finetune import data
from finetune.tasks import TASKS
from pretrain.data import sources

REPO = pathlib.Path(__file__).resolve().parents[1]
TOOL = 'tools/movie_reviews_to_glue.py'
MEMBER = 'hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt'
INNER = 'vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz'

# (id, rating, sentence as in the file); ids end in every digit so each split gets positive and negative rows
ROWS = [(i, r, f'Movie {i} was {"great" if r > 0 else "dull" if r < 0 else "so-so"} .')
        for i, r in [(1, 2.5), (2, -1.25), (3, 0.0), (4, 3.1), (5, -3.7), (6, 0.4), (7, -0.2), (8, 1.0),
                     (9, -2.0), (10, 2.2), (11, -1.5), (12, 0.0), (13, 1.8), (14, -0.6), (15, 2.9),
                     (16, -2.4), (17, 0.7), (18, -1.1), (19, 3.3), (20, -0.9), (21, 1.4), (30, 0.0),
                     (40, 0.5), (41, -3.0), (50, -4.0), (51, 4.0), (60, 0.1), (61, 0.0), (99, -0.3)]]
ROWS += [(102, 1.5, '  Un film très réussi , padded\u2028over two lines .  '), (103, -1.0, 'Flat ; no spark .')]
CLEAN = {102: 'Un film très réussi , padded over two lines .'}


def expected(split):
  rows = [(i, r, CLEAN.get(i, s)) for i, r, s in ROWS if r != 0]
  rule = {0: 'dev', 1: 'test'}
  return [(s, str(int(r > 0))) for i, r, s in rows if rule.get(i % 10, 'train') == split]


def ground_truth(rows=ROWS, extra=()):
  lines = [f'{i}\t{r}\t{s}' for i, r, s in rows] + list(extra)
  return '\r\n'.join(lines).encode('utf-8')  # CRLF, no newline after the last line


def tar_bytes(files):
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode='w:gz') as tar:
    for name, payload in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
  return buf.getvalue()


def make_sources(root, text):
  """The three SOURCE forms, nested as in the real vaderSentiment 3.3.2 sdist."""
  root.mkdir(parents=True, exist_ok=True)
  txt = root / 'movieReviewSnippets_GroundTruth.txt'
  txt.write_bytes(text)
  inner = root / 'hutto_ICWSM_2014.tar.gz'
  inner.write_bytes(tar_bytes({'hutto_ICWSM_2014/amazonReviewSnippets_GroundTruth.txt': b'1\t1.0\tnot this\r\n',
                               MEMBER: text}))
  sdist = root / 'vaderSentiment-3.3.2.tar.gz'
  sdist.write_bytes(tar_bytes({'vaderSentiment-3.3.2/PKG-INFO': b'Name: vaderSentiment\n',
                               INNER: inner.read_bytes()}))
  return {'sdist': sdist, 'inner': inner, 'txt': txt}


def run(source, out):
  return subprocess.run([sys.executable, TOOL, str(source), '--out', str(out)], cwd=REPO, capture_output=True,
                        text=True, timeout=60)


def read_tsv(path):
  return [line.split('\t') for line in path.read_text(encoding='utf-8').split('\n')[:-1]]


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('movies')
  sources = make_sources(root / 'src', ground_truth())
  outs = {}
  for form, source in sources.items():
    result = run(source, root / form)
    assert result.returncode == 0, result.stderr
    outs[form] = (root / form, result.stdout)
  return outs


def test_split_and_label_rules(built):
  out, _ = built['sdist']
  for split in ('train', 'dev'):
    rows = read_tsv(out / 'SST-2' / f'{split}.tsv')
    assert rows[0] == ['sentence', 'label']
    assert [tuple(r) for r in rows[1:]] == expected(split)
  assert [s for s, _ in expected('dev')] == [f'Movie {i} was {w} .' for i, w in
                                             [(10, 'great'), (20, 'dull'), (40, 'great'), (50, 'dull'), (60, 'great')]]
  assert [s for s, _ in expected('test')][:3] == ['Movie 1 was great .', 'Movie 11 was dull .', 'Movie 21 was great .']
  assert {y for _, y in expected('train')} == {'0', '1'}


def test_test_split_hides_labels(built):
  out, _ = built['sdist']
  test = read_tsv(out / 'SST-2' / 'test.tsv')
  labels = read_tsv(out / 'SST-2' / 'test_labels.tsv')
  want = expected('test')
  assert test[0] == ['index', 'sentence'] and labels[0] == ['index', 'label']
  assert test[1:] == [[str(n), s] for n, (s, _) in enumerate(want)]
  assert labels[1:] == [[str(n), y] for n, (_, y) in enumerate(want)]


def test_zero_ratings_dropped(built):
  out, stdout = built['sdist']
  written = ''.join(p.read_text(encoding='utf-8') for p in sorted(out.rglob('*')) if p.is_file())
  assert 'so-so' not in written
  assert 'dropped 4 zero-rated' in stdout
  assert 'train: ' in stdout and 'dev: 5 sentences, 3 positive' in stdout


def test_unlabeled_text_is_train_only(built):
  out, _ = built['sdist']
  text = (out / 'movie_reviews_train.txt').read_text(encoding='utf-8')
  assert text.split('\n')[:-1] == [s for s, _ in expected('train')]
  assert CLEAN[102] in text and 'Movie 10 ' not in text and 'Movie 1 ' not in text
  # the JSONL twin: one pretraining document per sentence, as pretrain.data.sources reads it
  documents = list(sources.read_documents(f'jsonl:{out / "movie_reviews_train.jsonl"}'))
  assert documents == [s for s, _ in expected('train')]


def test_source_forms_agree(built):
  files = {form: {p.relative_to(out): p.read_bytes() for p in out.rglob('*') if p.is_file()}
           for form, (out, _) in built.items()}
  assert sorted(map(str, files['sdist'])) == ['SST-2/dev.tsv', 'SST-2/test.tsv', 'SST-2/test_labels.tsv',
                                              'SST-2/train.tsv', 'movie_reviews_train.jsonl', 'movie_reviews_train.txt']
  assert files['sdist'] == files['inner'] == files['txt']


def test_finetune_reader_accepts_output(built):
  out, _ = built['sdist']
  sst2 = next(t for t in (TASKS.values() if isinstance(TASKS, dict) else TASKS) if t.name == 'sst2')
  root = data.glue_dir(f'glue_dir:{out}')
  dev = data.read_split(root, sst2, 'dev.tsv', with_labels=True)
  assert dev.skipped == 0 and [t for (t,) in dev.texts] == [s for s, _ in expected('dev')]
  assert dev.labels.tolist() == [int(y) for _, y in expected('dev')]
  test = data.read_split(root, sst2, 'test.tsv', with_labels=False)
  assert test.labels is None and test.indices == [str(n) for n in range(len(expected('test')))]


def test_rerun_overwrites(tmp_path):
  out = tmp_path / 'out'
  first = make_sources(tmp_path / 'a', ground_truth())['txt']
  second = make_sources(tmp_path / 'b', ground_truth([(2, -1.0, 'Replaced .'), (10, 1.0, 'Dev only .')]))['txt']
  assert run(first, out).returncode == 0
  assert run(second, out).returncode == 0
  assert (out / 'movie_reviews_train.txt').read_text() == 'Replaced .\n'
  assert read_tsv(out / 'SST-2' / 'test.tsv') == [['index', 'sentence']]
  assert not [p for p in out.rglob('*.tmp')]


def check_error(result, *needles):
  assert result.returncode == 2
  assert result.stdout == ''
  lines = result.stderr.strip().split('\n')
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  for needle in needles:
    assert needle in lines[0]


def test_missing_source(tmp_path):
  missing = tmp_path / 'nope.tar.gz'
  check_error(run(missing, tmp_path / 'out'), str(missing))
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('nested', [True, False])
def test_tarball_without_file(tmp_path, nested):
  inner = tar_bytes({'hutto_ICWSM_2014/tweets_GroundTruth.txt': b'1\t1.0\thi'})
  tarball = tmp_path / 'x.tar.gz'
  tarball.write_bytes(tar_bytes({INNER: inner}) if nested else inner)
  check_error(run(tarball, tmp_path / 'out'), str(tarball), 'movieReviewSnippets_GroundTruth.txt')
  assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('bad', ['7\t1.0', '7\t1.0\tone\ttoo many', '7\tgood\tNot a number .',
                                 'seven\t1.0\tNot an id .', '7\tnan\tNot finite .'])
@pytest.mark.parametrize('form', ['sdist', 'txt'])
def test_malformed_line(tmp_path, bad, form):
  rows = [r for r in ROWS if r[0] != 7][:10]
  source = make_sources(tmp_path, ground_truth(rows, extra=[bad, '200\t1.0\tAfter .']))[form]
  line = f':{len(rows) + 1}:'
  names = [str(source), MEMBER] if form == 'sdist' else [str(source)]
  check_error(run(source, tmp_path / 'out'), *names, line)
  assert not (tmp_path / 'out').exists()


def demo_summary_code():
  """The Python the demo script runs last (its summary), cut out of scripts/movie_review_demo.sh."""
  script = (REPO / 'scripts' / 'movie_review_demo.sh').read_text()
  start = script.index("<<'PY'\n") + len("<<'PY'\n")
  return script[start:script.index('\nPY\n', start)]


def test_demo_summary_prints_mean_spread_and_gain(tmp_path):
  for name, values in (('pretrained', [78.0, 80.0, 79.0]), ('from_scratch', [75.5, 74.5, 75.0])):
    (tmp_path / name).mkdir()
    mean, std = sum(values) / 3, (sum((v - sum(values) / 3) ** 2 for v in values) / 3) ** 0.5
    (tmp_path / name / 'glue_results.json').write_text(json.dumps(
        {'tasks': {'sst2': {'dev/accuracy': {'mean': mean, 'std': std, 'values': values}}}}))
  seed_dir = tmp_path / 'pretrained' / 'sst2' / 'seed_0'
  seed_dir.mkdir(parents=True)
  seed_dir.joinpath('results.json').write_text(json.dumps(
      {'majority_baseline': {'dev': {'accuracy': 0.506}}, 'learning_rate': 1.8e-4, 'num_train_examples': 8457}))
  result = subprocess.run([sys.executable, '-', str(tmp_path)], input=demo_summary_code(), capture_output=True,
                          text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0].startswith('tiny bert, pretrained') and ' 79.0 ± 0.8 ' in lines[0]
  assert 'min 78.0, max 80.0; 3 seeds: 78.0, 80.0, 79.0' in lines[0]
  assert lines[1].startswith('same model, no pretraining') and ' 75.0 ± 0.4 ' in lines[1]
  assert lines[2].startswith('pretraining gains') and '+4.0 points' in lines[2]
  assert lines[3].startswith("train's majority class") and ' 50.6 ' in lines[3] and 'learning rate 0.00018' in lines[3]
  assert len(lines) == 4  # no MiniLM run in this OUT


def test_the_demo_recipe_is_a_valid_tiny_mlm_config_on_the_train_sentences_only():
  """configs/pretrain_movie_reviews.py validates as a whole pretraining config (no compilation) and reads the
  unlabeled train sentences the tool writes, never the dev or test ones."""
  from configs import pretrain_movie_reviews  # pylint: disable=import-outside-toplevel
  from pretrain.settings import PretrainSettings  # pylint: disable=import-outside-toplevel
  config = pretrain_movie_reviews.get_config()
  settings = PretrainSettings.from_config(config)
  assert settings.model.hidden_size == 256 and config.mlm.mask_prob == 0.3 and config.train.steps == 600
  assert config.data.source.startswith('jsonl:') and config.data.source.endswith('/movie_reviews_train.jsonl')
