"""Text sources named by strings: documents as an iterator of str, with counts of what was skipped.

  builtin:stdlib-docs   docstrings of the running Python's stdlib (one document per module) plus the
                        reference topics of `pydoc_data.topics` (one document per topic); cached as JSONL
  text:GLOB             one document per file; \\r\\n and \\r become \\n, blank lines are kept
  jsonl:GLOB            one document per line, field `text`
  tfds:NAME[/CONFIG]    split `train` of a locally prepared TFDS dataset (array_record), field `text`

Every source goes through the same filter: non-UTF-8 bytes are replaced (U+FFFD) and counted, blank
documents are skipped, documents over `max_doc_chars` are split into chunks (at a newline or space in the
last half of the window when there is one), files with NUL bytes are skipped as binary, and matched files
that cannot be read (a dangling symlink, a file deleted after the glob, an I/O error) are skipped with a
warning. Every skip is counted in SourceStats; a source left with no documents is a ConfigError naming
the field, raised when the iteration ends.
"""

from __future__ import annotations

import ast
import dataclasses
import gc
import glob
import json
import logging
import os
import pathlib
import platform
import sys
import sysconfig
from collections.abc import Iterable, Iterator

from pretrain.runtime.errors import ConfigError, first_line
from pretrain.runtime.files import write_atomic

SCHEMES = ('builtin', 'text', 'jsonl', 'tfds')
BUILTIN_CORPORA = ('stdlib-docs',)
_STDLIB_DOCS_VERSION = 1  # raise when the extraction changes, so caches are rebuilt
_SKIP_DIRS = frozenset({'site-packages', 'dist-packages', 'test', 'tests', 'idle_test', '__pycache__'})


@dataclasses.dataclass
class SourceStats:
  """What reading a source saw; pass one to `read_documents` and read it after iterating."""
  files: int = 0
  documents: int = 0  # documents yielded (chunks of split documents count one each)
  skipped_empty: int = 0  # blank or whitespace-only documents / files
  skipped_binary: int = 0  # files with NUL bytes
  skipped_unreadable: int = 0  # matched files that cannot be read: dangling symlinks, vanished files, I/O errors
  skipped_bad_records: int = 0  # JSONL lines that are not JSON objects with a string `text`
  replaced_undecodable: int = 0  # documents kept with invalid UTF-8 replaced by U+FFFD
  split_overlong: int = 0  # documents longer than max_doc_chars, split into chunks

  def as_dict(self) -> dict[str, int]:
    return dataclasses.asdict(self)

  def summary(self) -> str:
    """The non-zero counts, e.g. 'files 3, skipped_empty 2, skipped_binary 1'."""
    return ', '.join(f'{k} {v}' for k, v in self.as_dict().items() if v)


def cache_dir() -> pathlib.Path:
  """$FLAX_PRETRAIN_CACHE, else ~/.cache/flax-pretrain (created on demand)."""
  path = os.environ.get('FLAX_PRETRAIN_CACHE') or os.path.join(os.path.expanduser('~'), '.cache', 'flax-pretrain')
  return pathlib.Path(path)


def read_documents(source: str, *, max_doc_chars: int = 100_000, stats: SourceStats | None = None,
                   field: str = 'data.source') -> Iterator[str]:
  """Documents of `source`. Bad sources raise ConfigError naming `field` now, not on first `next`; a source
  whose every document is filtered out raises it when the iteration ends."""
  if max_doc_chars < 1:
    raise ConfigError(f'data.max_doc_chars: must be >= 1, got {max_doc_chars}')
  stats = stats if stats is not None else SourceStats()
  scheme, sep, rest = source.partition(':')
  if not sep or scheme not in SCHEMES:
    known = ', '.join(f'{s}:' for s in SCHEMES)
    raise ConfigError(f"{field}: unknown source '{source}' (known schemes: {known})")
  if scheme == 'builtin':
    if rest not in BUILTIN_CORPORA:
      raise ConfigError(f"{field}: unknown builtin corpus '{source}' (known: "
                        + ', '.join(f'builtin:{c}' for c in BUILTIN_CORPORA) + ')')
    raw = ((text, False) for text in stdlib_docs())
  elif scheme == 'tfds':
    raw = _tfds_texts(rest, field, stats)
  else:
    paths = _glob(source, rest, field)
    raw = _text_files(paths, stats) if scheme == 'text' else _jsonl_files(paths, stats)
  return _filtered(raw, max_doc_chars, stats, f"{field}: no documents in '{source}' after filtering")


def _filtered(raw: Iterable[tuple[str, bool]], max_doc_chars: int, stats: SourceStats,
              empty_error: str) -> Iterator[str]:
  for text, replaced in raw:
    if not text.strip():
      stats.skipped_empty += 1
      continue
    stats.replaced_undecodable += replaced
    if len(text) > max_doc_chars:
      stats.split_overlong += 1
      for chunk in split_text(text, max_doc_chars):
        stats.documents += 1
        yield chunk
    else:
      stats.documents += 1
      yield text
  if not stats.documents:
    raise ConfigError(f'{empty_error} ({stats.summary()})')


def split_text(text: str, max_chars: int) -> list[str]:
  """Chunks of at most max_chars whose concatenation is `text`; cuts after a newline or space if one is
  in the second half of the window, else mid-word. Whitespace-only chunks are dropped."""
  chunks, start = [], 0
  while len(text) - start > max_chars:
    end = start + max_chars
    window = text[start:end]
    cut = window.rfind('\n')
    if cut < max_chars // 2:
      cut = max(window.rfind(' '), window.rfind('\t'))
    end = start + cut + 1 if cut >= max_chars // 2 else end
    chunks.append(text[start:end])
    start = end
  chunks.append(text[start:])
  return [c for c in chunks if c.strip()]


def _decode(data: bytes) -> tuple[str, bool]:
  try:
    return data.decode('utf-8'), False
  except UnicodeDecodeError:
    return data.decode('utf-8', errors='replace'), True


def _glob(source: str, pattern: str, field: str) -> list[str]:
  """Regular files and dangling symlinks (counted as unreadable later); never directories, FIFOs or devices."""
  paths = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                 if os.path.isfile(p) or (os.path.islink(p) and not os.path.exists(p)))
  if not paths:
    raise ConfigError(f"{field}: no files match '{source}'")
  return paths


def _unreadable(path: str, e: OSError, stats: SourceStats) -> None:
  stats.skipped_unreadable += 1
  logging.warning('%s: skipped, cannot read it (%s)', path, e.strerror or type(e).__name__)


def _text_files(paths: list[str], stats: SourceStats) -> Iterator[tuple[str, bool]]:
  for path in paths:
    stats.files += 1
    try:
      doc = _read_text(path)
    except OSError as e:
      _unreadable(path, e, stats)
      continue
    if doc is None:
      stats.skipped_binary += 1
    else:
      yield doc


def _read_text(path: str) -> tuple[str, bool] | None:
  """(text, replaced) of a file, None for a binary one; its bytes are freed before the text is used."""
  data = pathlib.Path(path).read_bytes()
  if b'\0' in data:
    return None
  text, replaced = _decode(data)
  del data
  return text.removeprefix('\ufeff').replace('\r\n', '\n').replace('\r', '\n'), replaced


def _jsonl_files(paths: list[str], stats: SourceStats) -> Iterator[tuple[str, bool]]:
  for path in paths:
    stats.files += 1
    try:
      with open(path, 'rb') as f:
        for line in f:
          if line.strip():
            record = _parse_record(line)
            if record is None:
              stats.skipped_bad_records += 1
            else:
              yield record
    except OSError as e:  # a read error mid-file keeps the records before it
      _unreadable(path, e, stats)


def _parse_record(line: bytes) -> tuple[str, bool] | None:
  """(text, replaced) of a JSONL line, None unless it is a JSON object with a string `text`."""
  raw, replaced = _decode(line)
  try:
    record = json.loads(raw)
  except (ValueError, RecursionError):  # RecursionError: deeply nested arrays such as [[[[...
    return None
  del raw
  text = record.get('text') if isinstance(record, dict) else None
  if not isinstance(text, str):
    return None
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:  # lone surrogates such as "\ud800" in the JSON
    text, replaced = text.encode('utf-16', 'surrogatepass').decode('utf-16', 'replace'), True
  return text, replaced


def _tfds_texts(name: str, field: str, stats: SourceStats) -> Iterator[tuple[str, bool]]:
  """Opens the source now (so a dataset that is not prepared fails fast, never downloading)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  # slow; only when used
  data_dir = os.environ.get('TFDS_DATA_DIR') or None  # read now: tfds reads it once, at import
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except  # DatasetNotFoundError, bad config names, ...
    raise ConfigError(f"{field}: unknown TFDS dataset 'tfds:{name}' ({first_line(e)})") from None
  if not builder.is_prepared():
    raise ConfigError(f"{field}: TFDS dataset 'tfds:{name}' is not prepared in {builder.data_dir} "
                      '(prepare it with file_format=array_record; nothing is downloaded here)')
  try:
    data = tfds.data_source(name, split='train', data_dir=data_dir, download=False)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"{field}: cannot read 'tfds:{name}' split train ({first_line(e)})") from None

  def texts() -> Iterator[tuple[str, bool]]:
    stats.files += 1
    for i in range(len(data)):
      record = data[i]
      text = record.get('text') if isinstance(record, dict) else None
      if isinstance(text, bytes):
        yield _decode(text)
      elif isinstance(text, str):
        yield text, False
      else:
        stats.skipped_bad_records += 1
  return texts()


# builtin:stdlib-docs


def stdlib_docs() -> list[str]:
  """The builtin corpus, extracted once per Python version and cached as JSONL in cache_dir()."""
  python = platform.python_implementation().lower() + '.'.join(map(str, sys.version_info[:3]))
  path = cache_dir() / f'stdlib-docs-v{_STDLIB_DOCS_VERSION}-{python}.jsonl'
  if path.exists():
    try:
      with open(path, encoding='utf-8') as f:
        docs = [json.loads(line)['text'] for line in f]
      if docs and all(isinstance(d, str) for d in docs):
        return docs
      raise ValueError('not a list of texts')
    except (OSError, ValueError, KeyError, TypeError) as e:  # a damaged cache is rebuilt
      logging.warning('rebuilding the stdlib-docs cache %s: %s', path, first_line(e))
  docs = _extract_stdlib_docs()
  try:
    write_atomic(path, ''.join(json.dumps({'text': d}) + '\n' for d in docs))
  except OSError as e:
    logging.warning('cannot cache the stdlib-docs corpus in %s: %s', path.parent, e)
  return docs


def _extract_stdlib_docs() -> list[str]:
  from pydoc_data import topics  # pylint: disable=g-import-not-at-top
  root = sysconfig.get_paths()['stdlib']
  docs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    for name in sorted(filenames):
      if name.endswith('.py'):
        text = _module_docstrings(os.path.join(dirpath, name))
        if text:
          docs.append(text)
  docs.extend(topics.topics[key] for key in sorted(topics.topics))
  return docs


def _module_docstrings(path: str) -> str:
  """Module, class and function docstrings of one file in source order, blank-line separated."""
  try:
    source = pathlib.Path(path).read_bytes()
  except OSError:
    return ''
  collecting = gc.isenabled()
  gc.disable()  # CPython 3.11: finalizers run by a collection inside ast.parse can break its depth check
  try:
    tree = ast.parse(source)
  except (SyntaxError, ValueError):
    return ''
  finally:
    if collecting:
      gc.enable()
  parts = []

  def visit(node: ast.AST) -> None:
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      doc = ast.get_docstring(node, clean=True)
      if doc and doc.strip():
        parts.append(doc)
    for child in ast.iter_child_nodes(node):
      visit(child)

  visit(tree)
  return '\n\n'.join(parts)
