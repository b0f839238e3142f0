"""Reads GLUE task files in the official GLUE directory layout (`glue_dir:PATH`); no TensorFlow needed.

A missing, unreadable or empty file, a missing column, or a label outside the task's set, is an error naming
the file (and line). Rows end at newlines only (a form feed or U+2028 inside a text does not end its row). Rows
with the wrong number of fields (real QQP has a few) are skipped and reported with their line numbers; more
than `max_malformed_fraction` of a file is an error.
"""
import dataclasses
import pathlib

import numpy as np
from absl import logging

from finetune.tasks import TASKS, Task
from pretrain.runtime.errors import ConfigError, require

GLUE_DIR_SCHEME = 'glue_dir:'
INDEX_COLUMNS = ('index', 'id')
SHOWN_LINES = 5  # malformed line numbers named in a report


@dataclasses.dataclass
class Examples:
  texts: list[tuple[str, ...]]  # one or two texts per example
  labels: np.ndarray | None  # int32 class ids, float32 scores (regression), or None (test files)
  indices: list[str]  # the file's own example ids (submission files are keyed by them)
  skipped: int  # malformed rows


@dataclasses.dataclass
class TaskData:
  train: Examples
  dev: dict[str, Examples]  # result key ('dev', 'dev_matched', ...) -> labelled examples
  test: dict[str, Examples]  # submission name ('SST-2', 'MNLI-m', 'AX', ...) -> unlabelled examples
  test_tasks: dict[str, Task]  # submission name -> the task whose labels name its predictions


def glue_dir(source: str, field: str = 'data.source') -> pathlib.Path:
  require(source.startswith(GLUE_DIR_SCHEME), f"{field}: expected 'glue_dir:PATH', got '{source}'")
  path = pathlib.Path(source[len(GLUE_DIR_SCHEME):]).expanduser()
  require(path.is_dir(), f'{field}: GLUE directory {path} does not exist')
  return path


def source_dir(source: str, scheme: str, task: str, what: str, field: str = 'data.source') -> pathlib.Path:
  """The directory of a `scheme`DIR source (conll:DIR, squad:DIR), which must exist."""
  require(source.startswith(scheme), f"{field}: expected '{scheme}DIR' for task {task}, got {source!r}")
  path = pathlib.Path(source[len(scheme):]).expanduser()
  require(path.is_dir(), f'{field}: {what} directory {path} does not exist')
  return path


def _column(header: list[str] | None, column: str | int, path: pathlib.Path) -> int:
  if isinstance(column, int):
    return column
  if header is None or column not in header:  # (a binary file's "header" can be long garbage: cut short)
    raise ConfigError(f'{path}: no column {column!r} in the header {repr(header)[:200]}')
  return header.index(column)


def _label(task: Task, raw: str, where: str) -> int | float:
  if task.is_regression:
    try:
      return float(raw)
    except ValueError:
      raise ConfigError(f'{where}: label {raw!r} is not a number') from None
  require(raw in task.labels, f'{where}: label {raw!r} is not one of {task.name} labels {task.labels}')
  return task.labels.index(raw)


def read_split(root: pathlib.Path, task: Task, file_name: str, with_labels: bool,
               max_malformed_fraction: float = 0.001) -> Examples:
  """Examples of GLUE_DIR/<task dir>/<file_name>; labels only when with_labels (train and dev files)."""
  path = root / task.directory / file_name
  require(path.is_file(), f'{path}: missing (expected the official GLUE layout under {root})')
  try:
    lines = path.read_bytes().decode('utf-8', errors='replace').replace('\r\n', '\n').split('\n')
  except OSError as e:
    raise ConfigError(f'{path}: cannot read it ({e.strerror or type(e).__name__})') from None
  require(any(line.strip() for line in lines), f'{path}: empty file')
  headerless = task.headerless_train_dev and with_labels
  header = None if headerless else lines[0].split('\t')
  first_line = 1 if headerless else 2  # 1-based line number of the first data row
  text_columns = task.text_columns if with_labels or not task.test_text_columns else task.test_text_columns
  text_idx = [_column(header, c, path) for c in text_columns]
  label_idx = _column(header, task.label_column, path) if with_labels else None
  index_idx = next((header.index(c) for c in INDEX_COLUMNS if header and c in header), None)
  width = len(header) if header else task.headerless_width

  texts, labels, indices, malformed = [], [], [], []
  for n, line in enumerate(lines[first_line - 1:]):
    if not line.strip():
      continue
    row = line.split('\t')
    if len(row) != width:
      malformed.append((first_line + n, len(row)))
      continue
    if with_labels:
      labels.append(_label(task, row[label_idx].strip(), f'{path}:{first_line + n}'))
    texts.append(tuple(row[i] for i in text_idx))
    indices.append(row[index_idx] if index_idx is not None else str(n))
  if malformed:
    shown = ', '.join(f'line {n} ({fields} fields)' for n, fields in malformed[:SHOWN_LINES])
    more = f' and {len(malformed) - SHOWN_LINES} more' if len(malformed) > SHOWN_LINES else ''
    report = f'{path}: {len(malformed)} malformed rows, expected {width} tab-separated fields: {shown}{more}'
    require(len(malformed) <= max_malformed_fraction * (len(texts) + len(malformed)),
            f'{report} (more than data.max_malformed_fraction={max_malformed_fraction})')
    logging.warning('%s; skipped', report)
  require(texts, f'{path}: no examples')
  label_array = None
  if with_labels:
    label_array = np.asarray(labels, np.float32 if task.is_regression else np.int32)
  return Examples(texts, label_array, indices, len(malformed))


def read_glue_dir(root: pathlib.Path, task: Task, max_malformed_fraction: float) -> TaskData:
  """train and dev files are required; test files are read when present (for submission predictions)."""
  read = lambda t, name, labelled: read_split(root, t, name, labelled, max_malformed_fraction)
  train = read(task, 'train.tsv', True)
  dev = {key: read(task, name, True) for key, name in task.dev_files.items()}
  test, test_tasks = {}, {}
  for test_task in (task, *(TASKS[name] for name in task.predicts_also)):
    for submission, name in test_task.test_files.items():
      if (root / test_task.directory / name).is_file():
        test[submission], test_tasks[submission] = read(test_task, name, False), test_task
      else:
        logging.warning('%s: missing; no %s.tsv submission predictions', root / test_task.directory / name,
                        submission)
  return TaskData(train, dev, test, test_tasks)
