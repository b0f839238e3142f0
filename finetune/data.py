"""Reads GLUE task files in the official GLUE directory layout (`glue_dir:PATH`); no TensorFlow needed.

Rows whose column count does not match the header (a few QQP training lines) or whose label is not one of
the task's labels are skipped and counted, never fatal; missing files and columns are errors naming them.
"""
import dataclasses
import pathlib

import numpy as np

from finetune.tasks import Task
from pretrain.core.errors import ConfigError, require

GLUE_DIR_SCHEME = 'glue_dir:'
INDEX_COLUMNS = ('index', 'id')


@dataclasses.dataclass
class Examples:
  texts: list[tuple[str, ...]]  # one or two texts per example
  labels: np.ndarray | None  # int32 class ids, float32 scores (regression), or None (test files)
  indices: list[str]  # the file's own example ids (submission files are keyed by them)
  skipped: int  # malformed rows


def glue_dir(source: str, field: str = 'data.source') -> pathlib.Path:
  require(source.startswith(GLUE_DIR_SCHEME), f"{field}: expected 'glue_dir:PATH', got '{source}'")
  path = pathlib.Path(source[len(GLUE_DIR_SCHEME):]).expanduser()
  require(path.is_dir(), f'{field}: GLUE directory {path} does not exist')
  return path


def _column(header: list[str] | None, column: str | int, path: pathlib.Path) -> int:
  if isinstance(column, int):
    return column
  require(header is not None and column in header, f'{path}: no column {column!r} in the header {header}')
  return header.index(column)


def read_split(root: pathlib.Path, task: Task, file_name: str, with_labels: bool) -> Examples:
  """Examples of GLUE_DIR/<task dir>/<file_name>; labels only when with_labels (train and dev files)."""
  path = root / task.directory / file_name
  require(path.is_file(), f'{path}: missing (expected the official GLUE layout under {root})')
  lines = path.read_text(encoding='utf-8', errors='replace').splitlines()
  headerless = task.headerless_train_dev and with_labels
  header = None if headerless else lines[0].split('\t')
  rows = [line.split('\t') for line in (lines if headerless else lines[1:]) if line.strip()]
  text_columns = task.text_columns if with_labels or not task.test_text_columns else task.test_text_columns
  text_idx = [_column(header, c, path) for c in text_columns]
  label_idx = _column(header, task.label_column, path) if with_labels else None
  index_idx = next((header.index(c) for c in INDEX_COLUMNS if header and c in header), None)
  width = len(header) if header else max(text_idx + [label_idx or 0]) + 1

  texts, labels, indices, skipped = [], [], [], 0
  for n, row in enumerate(rows):
    if (len(row) != width) if header else (len(row) < width):
      skipped += 1
      continue
    if with_labels:
      raw = row[label_idx].strip()
      if task.is_regression:
        try:
          labels.append(float(raw))
        except ValueError:
          skipped += 1
          continue
      elif raw in task.labels:
        labels.append(task.labels.index(raw))
      else:
        skipped += 1
        continue
    texts.append(tuple(row[i] for i in text_idx))
    indices.append(row[index_idx] if index_idx is not None else str(n))
  if not texts:
    raise ConfigError(f'{path}: no usable rows ({skipped} malformed)')
  label_array = None
  if with_labels:
    label_array = np.asarray(labels, np.float32 if task.is_regression else np.int32)
  return Examples(texts, label_array, indices, skipped)
