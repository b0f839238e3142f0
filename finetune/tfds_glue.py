"""`tfds:glue/TASK`: GLUE through tensorflow-datasets (the `tf` extra), read into the same Examples.

Fails fast with one error when TensorFlow is absent, or when the dataset is not prepared and its download
host cannot be reached (tfds would otherwise retry for minutes).
"""
import os
import socket
import urllib.parse

import numpy as np

from finetune.data import Examples, TaskData
from finetune.tasks import TASKS, Task
from pretrain.runtime.errors import ConfigError, first_line, require

# Our result keys and submission names -> tfds split names.
SPLITS = {'train': 'train', 'dev': 'validation', 'dev_matched': 'validation_matched',
          'dev_mismatched': 'validation_mismatched', 'MNLI-m': 'test_matched', 'MNLI-mm': 'test_mismatched'}
PROBE_TIMEOUT_S = 5.0
FALLBACK_URL = 'https://dl.fbaipublicfiles.com/glue/'  # where GLUE lives (MRPC names no single url)
FIELD = 'data.source'


def _import_tfds():
  try:
    import tensorflow  # noqa: F401  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise ConfigError(f"{FIELD}: 'tfds:glue/...' needs TensorFlow: pip install 'flax-pretrain[tf]', or use "
                      "'glue_dir:PATH' (the official GLUE directory, no TensorFlow needed)") from None
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def _reachable(url: str) -> str | None:
  """None when url's host accepts a connection within PROBE_TIMEOUT_S, else why not."""
  parsed = urllib.parse.urlparse(url)
  try:
    socket.create_connection((parsed.hostname, parsed.port or 443), timeout=PROBE_TIMEOUT_S).close()
    return None
  except OSError as e:
    return f'{parsed.hostname}: {first_line(e)}'


def _builder(tfds, task: Task):
  name = f'glue/{task.name}'
  data_dir = os.environ.get('TFDS_DATA_DIR') or None
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    problem = _reachable(getattr(builder.builder_config, 'data_url', None) or FALLBACK_URL)
    require(problem is None, f"{FIELD}: 'tfds:{name}' is not prepared in {builder.data_dir} and cannot be "
            f'downloaded ({problem}); prepare it where there is network and set TFDS_DATA_DIR')
    try:
      builder.download_and_prepare()
    except Exception as e:  # pylint: disable=broad-except
      raise ConfigError(f"{FIELD}: preparing 'tfds:{name}' failed ({first_line(e)})") from None
  return builder


def _examples(tfds, builder, task: Task, split: str, with_labels: bool) -> Examples:
  text_features = list(builder.builder_config.text_features)  # e.g. ['premise', 'hypothesis'], in order
  names = builder.info.features['label'].names if not task.is_regression else None
  remap = None
  if names and set(names) == set(task.labels):
    remap = np.asarray([task.labels.index(n) for n in names])  # e.g. mnli's label order differs from GLUE's files
  texts, labels, indices = [], [], []
  for record in tfds.as_numpy(builder.as_dataset(split=split)):
    texts.append(tuple(record[f].decode('utf-8') for f in text_features))
    labels.append(record['label'])
    indices.append(str(record['idx']))
  label_array = None
  if with_labels:
    label_array = np.asarray(labels, np.float32 if task.is_regression else np.int32)
    if remap is not None:
      label_array = remap[label_array]
  return Examples(texts, label_array, indices, skipped=0)


def read_tfds(source: str, task: Task) -> TaskData:
  require(source == f'tfds:glue/{task.name}', f"{FIELD}: expected 'tfds:glue/{task.name}' for task "
          f"'{task.name}', got {source!r}")
  tfds = _import_tfds()
  builder = _builder(tfds, task)
  train = _examples(tfds, builder, task, 'train', True)
  dev = {key: _examples(tfds, builder, task, SPLITS[key], True) for key in task.dev_files}
  test, test_tasks = {}, {}
  for test_task in (task, *(TASKS[name] for name in task.predicts_also)):
    test_builder = builder if test_task is task else _builder(tfds, test_task)
    for submission in test_task.test_files:
      test[submission] = _examples(tfds, test_builder, test_task, SPLITS.get(submission, 'test'), False)
      test_tasks[submission] = test_task
  return TaskData(train, dev, test, test_tasks)
