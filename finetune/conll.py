"""Reads and writes CoNLL-2003 named-entity files: one token per line (word first, tag last), blank lines between
sentences, `-DOCSTART-` lines between documents. IOB1 and IOB2 tags are read, and always returned as IOB2.

A line with a single column, a tag that is not O, B-X or I-X, or a file without sentences, is an error naming
`path:line`. Lines end at newlines only (CRLF is read as LF); columns are separated by spaces or tabs.
"""
import dataclasses
import pathlib
import re

from absl import logging

from pretrain.runtime.errors import ConfigError, require
from pretrain.runtime.files import write_atomic

DOCSTART = '-DOCSTART-'
TRAIN_NAMES = ('train.txt', 'eng.train')
DEV_NAMES = ('dev.txt', 'valid.txt', 'validation.txt', 'eng.testa')
TEST_NAMES = ('test.txt', 'eng.testb')
_COLUMNS = re.compile(r'[ \t]+')


@dataclasses.dataclass
class Sentence:
  words: list[str]
  tags: list[str]  # IOB2


def _check_tag(tag: str, where: str) -> None:
  ok = tag == 'O' or (tag[:2] in ('B-', 'I-') and len(tag) > 2)
  require(ok, f"{where}: tag {tag!r} is not O, B-TYPE or I-TYPE (only IOB1/IOB2 files are read, not IOBES)")


def to_iob2(tags: list[str]) -> list[str]:
  """IOB1 or IOB2 tags as IOB2: an I-X that does not continue an entity of type X begins one (B-X)."""
  out = []
  for i, tag in enumerate(tags):
    if tag.startswith('I-') and (i == 0 or tags[i - 1][2:] != tag[2:]):
      tag = 'B-' + tag[2:]
    out.append(tag)
  return out


def _read_text(path: pathlib.Path) -> str:
  try:
    data = path.read_bytes()
  except OSError as e:
    raise ConfigError(f'{path}: cannot read it ({e.strerror or type(e).__name__})') from None
  try:
    return data.decode('utf-8')
  except UnicodeDecodeError:  # the German CoNLL-2003 files are Latin-1
    logging.warning('%s: not UTF-8; read as Latin-1', path)
    return data.decode('latin-1')


def read_conll(path: str | pathlib.Path) -> list[Sentence]:
  """The sentences of a CoNLL file, tags converted to IOB2."""
  path = pathlib.Path(path)
  require(path.is_file(), f'{path}: missing (expected a CoNLL-2003 file)')
  sentences, words, tags = [], [], []

  def close() -> None:
    if words:
      sentences.append(Sentence(list(words), to_iob2(tags)))
      words.clear()
      tags.clear()

  for n, line in enumerate(_read_text(path).split('\n'), 1):
    columns = _COLUMNS.split(line.strip(' \t\r'))
    if not line.strip() or columns[0] == DOCSTART:  # a sentence, or a document, ends
      close()
    else:
      require(len(columns) >= 2, f'{path}:{n}: one column {line.strip()[:100]!r}; expected "word ... tag"')
      _check_tag(columns[-1], f'{path}:{n}')
      words.append(columns[0])
      tags.append(columns[-1])
  close()
  require(sentences, f'{path}: no sentences (expected CoNLL-2003 lines "word ... tag")')
  return sentences


def label_list(sentences: list[Sentence]) -> tuple[str, ...]:
  """'O', then per entity type (sorted) its B- and I- tag: both, even when one never occurs in `sentences`."""
  types = sorted({tag[2:] for s in sentences for tag in s.tags if tag != 'O'})
  return ('O', *(f'{prefix}-{t}' for t in types for prefix in ('B', 'I')))


def write_conll(path: str | pathlib.Path, sentences: list[Sentence], predicted: list[list[str]]) -> None:
  """`word gold predicted` per line, a blank line after each sentence (conlleval's input); written atomically."""
  require(len(predicted) == len(sentences),
          f'{path}: {len(predicted)} predicted sentences for {len(sentences)} sentences')
  lines = []
  for i, (sentence, tags) in enumerate(zip(sentences, predicted)):
    require(len(tags) == len(sentence.words),
            f'{path}: sentence {i} has {len(sentence.words)} words but {len(tags)} predicted tags')
    lines += [f'{w} {g} {p}' for w, g, p in zip(sentence.words, sentence.tags, tags)]
    lines.append('')
  write_atomic(path, '\n'.join(lines) + '\n')


def split_files(root: pathlib.Path, field: str = 'data.source') -> dict[str, pathlib.Path | None]:
  """{'train', 'dev', 'test'} -> the file in `root` (test: None when absent); train and dev are required."""
  root = pathlib.Path(root)
  require(root.is_dir(), f'{field}: CoNLL directory {root} does not exist')
  found = {}
  for split, names in (('train', TRAIN_NAMES), ('dev', DEV_NAMES), ('test', TEST_NAMES)):
    found[split] = next((root / name for name in names if (root / name).is_file()), None)
    require(found[split] is not None or split == 'test',
            f'{field}: no {split} file in {root} (looked for {", ".join(names)})')
  return found
