"""Turns VADER's Rotten Tomatoes sentences into a GLUE SST-2 directory (read it as `glue_dir:DIR`).

  python tools/movie_reviews_to_glue.py vaderSentiment-3.3.2.tar.gz --out /data/movie_glue

SOURCE is the vaderSentiment 3.3.2 sdist (`pip download --no-binary :all: --no-deps vaderSentiment==3.3.2`),
its inner `additional_resources/hutto_ICWSM_2014.tar.gz`, or the extracted
`hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt` (10,605 lines `id<TAB>mean_rating<TAB>sentence`,
rating in [-4, 4]). Tarballs are read in memory, nothing is extracted to disk.

Labels: rating > 0 -> 1 (positive), rating < 0 -> 0 (negative), rating == 0 -> dropped.
Split, fixed by sentence id: id % 10 == 0 -> dev, id % 10 == 1 -> test, otherwise train.

Writes, overwriting earlier runs (each file via a temp name and os.replace):
  DIR/SST-2/train.tsv, dev.tsv     `sentence<TAB>label`, as GLUE's SST-2 files
  DIR/SST-2/test.tsv               `index<TAB>sentence` (GLUE test layout, labels hidden, index 0..n-1)
  DIR/SST-2/test_labels.tsv        `index<TAB>label`, to score test predictions yourself
  DIR/movie_reviews_train.txt      train sentences only, one per line, unlabeled (text:GLOB reads the whole
                                   file as one document)
  DIR/movie_reviews_train.jsonl    the same sentences as JSON lines {"text": ...}: one document per sentence
                                   with --config.data.source=jsonl:DIR/movie_reviews_train.jsonl, so each is
                                   pretrained as `[CLS] sentence [SEP]`, the form fine-tuning reads
Sentences are stripped; tabs and line breaks inside them become spaces. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Sequence

FILE_NAME = 'movieReviewSnippets_GroundTruth.txt'
TAR_SUFFIXES = ('.tar.gz', '.tgz', '.tar')
SPLITS = ('train', 'dev', 'test')


class InputError(Exception):
  """Bad SOURCE; the message names the file (and line)."""


def split_of(sentence_id: int) -> str:
  return {0: 'dev', 1: 'test'}.get(sentence_id % 10, 'train')


def clean(sentence: str) -> str:
  # splitlines also breaks at \x0b, \x85, \u2028, ... which would cut a TSV row when read back
  return ' '.join(sentence.strip().splitlines()).replace('\t', ' ').strip()


def _find_in_tar(tar: tarfile.TarFile, name: str) -> tuple[bytes, str] | None:
  """Bytes and `!`-joined member path of FILE_NAME in tar, looking into nested tarballs too."""
  members = [m for m in tar.getmembers() if m.isfile()]
  for m in members:
    if m.name.rsplit('/', 1)[-1] == FILE_NAME:
      return tar.extractfile(m).read(), f'{name}!{m.name}'
  for m in members:
    if m.name.endswith(TAR_SUFFIXES):
      with tarfile.open(fileobj=io.BytesIO(tar.extractfile(m).read())) as inner:
        found = _find_in_tar(inner, f'{name}!{m.name}')
      if found:
        return found
  return None


def load_source(path: str) -> tuple[bytes, str]:
  """The GroundTruth file's bytes and a display name for messages."""
  if not os.path.isfile(path):
    raise InputError(f'{path}: {"not a file" if os.path.exists(path) else "no such file"}')
  try:
    if tarfile.is_tarfile(path):
      with tarfile.open(path) as tar:
        found = _find_in_tar(tar, path)
      if found is None:
        raise InputError(f'{path}: no {FILE_NAME} in this tarball (nor in tarballs inside it)')
      return found
    if path.endswith(TAR_SUFFIXES):
      raise InputError(f'{path}: not a readable tarball')
    with open(path, 'rb') as f:
      return f.read(), path
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise InputError(f'{path}: cannot read: {e}') from e


def parse(data: bytes, name: str) -> tuple[list[tuple[int, float, str]], int]:
  """(id, rating, sentence) rows in file order, and the number of zero ratings dropped."""
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError as e:
    line_no = data[:e.start].count(b'\n') + 1
    raise InputError(f'{name}:{line_no}: not UTF-8') from e
  rows, zeros, seen = [], 0, {}
  for n, line in enumerate(text.split('\n'), 1):
    line = line.rstrip('\r')
    if not line.strip():
      continue
    fields = line.split('\t')
    where = f'{name}:{n}'
    if len(fields) != 3:
      raise InputError(f'{where}: expected 3 tab-separated fields (id, rating, sentence), got {len(fields)}')
    try:
      sentence_id = int(fields[0])
    except ValueError:
      raise InputError(f'{where}: id {fields[0]!r} is not an integer') from None
    try:
      rating = float(fields[1])
    except ValueError:
      raise InputError(f'{where}: rating {fields[1]!r} is not a number') from None
    if not math.isfinite(rating):
      raise InputError(f'{where}: rating {fields[1]!r} is not finite')
    if sentence_id in seen:
      raise InputError(f'{where}: id {sentence_id} already on line {seen[sentence_id]}')
    seen[sentence_id] = n
    sentence = clean(fields[2])
    if not sentence:
      raise InputError(f'{where}: empty sentence')
    if rating == 0:
      zeros += 1
    else:
      rows.append((sentence_id, rating, sentence))
  if not rows:
    raise InputError(f'{name}: no sentences with a nonzero rating')
  return rows, zeros


def write_atomic(path: str, lines: list[str]) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=os.path.basename(path) + '.', suffix='.tmp')
  try:
    with open(fd, 'w', encoding='utf-8', newline='\n') as f:
      f.writelines(line + '\n' for line in lines)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write_outputs(rows: list[tuple[int, float, str]], out: str) -> dict[str, list[tuple[str, int]]]:
  splits = {s: [] for s in SPLITS}
  for sentence_id, rating, sentence in rows:
    splits[split_of(sentence_id)].append((sentence, int(rating > 0)))
  sst2 = os.path.join(out, 'SST-2')
  os.makedirs(sst2, exist_ok=True)
  for s in ('train', 'dev'):
    write_atomic(os.path.join(sst2, f'{s}.tsv'), ['sentence\tlabel'] + [f'{t}\t{y}' for t, y in splits[s]])
  test = splits['test']
  write_atomic(os.path.join(sst2, 'test.tsv'), ['index\tsentence'] + [f'{i}\t{t}' for i, (t, _) in enumerate(test)])
  write_atomic(os.path.join(sst2, 'test_labels.tsv'),
               ['index\tlabel'] + [f'{i}\t{y}' for i, (_, y) in enumerate(test)])
  write_atomic(os.path.join(out, 'movie_reviews_train.txt'), [t for t, _ in splits['train']])
  write_atomic(os.path.join(out, 'movie_reviews_train.jsonl'),
               [json.dumps({'text': t}, ensure_ascii=False) for t, _ in splits['train']])
  return splits


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python tools/movie_reviews_to_glue.py', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('source', metavar='SOURCE', help=f'vaderSentiment sdist .tar.gz, hutto_ICWSM_2014.tar.gz '
                      f'or {FILE_NAME}')
  parser.add_argument('--out', required=True, metavar='DIR', help='output directory (created if missing)')
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    data, name = load_source(args.source)
    rows, zeros = parse(data, name)
  except InputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  try:
    splits = write_outputs(rows, args.out)
  except OSError as e:
    print(f'error: {args.out}: cannot write: {e}', file=sys.stderr)
    return 2
  for s in SPLITS:
    n, pos = len(splits[s]), sum(y for _, y in splits[s])
    print(f'{s}: {n} sentences, {pos} positive ({pos / max(n, 1):.1%})')
  print(f'dropped {zeros} zero-rated sentences; wrote {os.path.join(args.out, "SST-2")} and '
        f'{os.path.join(args.out, "movie_reviews_train")}.txt, .jsonl')
  return 0


if __name__ == '__main__':
  sys.exit(main())
