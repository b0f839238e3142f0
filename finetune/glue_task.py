"""GLUE (sentence and pair classification, STS-B regression) as a PreparedTask: `glue_dir:PATH` or `tfds:glue/T`.

Dev scores are the task's GLUE metrics, and macro-F1 beside them for tasks of more than two classes (MNLI).
Predictions: WORKDIR/predictions/dev*.tsv and the leaderboard's test files (finetune/outputs.py).
"""
import pathlib

import numpy as np

from finetune import data as data_lib
from finetune import features, outputs
from finetune import metrics as metrics_lib
from finetune.prepared import PreparedTask
from finetune.tasks import TASKS, Task
from finetune.tfds_glue import read_tfds
from pretrain.runtime.errors import require


def load_data(config, task: Task) -> data_lib.TaskData:
  if config.data.source.startswith('tfds:'):
    return read_tfds(config.data.source, task)
  root = data_lib.glue_dir(config.data.source)
  return data_lib.read_glue_dir(root, task, config.data.max_malformed_fraction)


def encode_all(task_data: data_lib.TaskData, tokenizer, max_length: int) -> tuple[dict, int]:
  """{('train'|'dev'|'test', key): arrays} all padded to one length, and that length."""
  splits = {('train', 'train'): task_data.train, **{('dev', k): v for k, v in task_data.dev.items()},
            **{('test', k): v for k, v in task_data.test.items()}}
  rows = {key: features.token_rows(examples, tokenizer, max_length) for key, examples in splits.items()}
  length = features.padded_length(list(rows.values()), max_length)
  arrays = {key: features.to_arrays(r, length, tokenizer.pad_id) for key, r in rows.items()}
  for key, examples in splits.items():
    if examples.labels is not None:
      arrays[key]['labels'] = examples.labels
  return arrays, length


def metric_names(task: Task) -> tuple[str, ...]:
  return task.metrics + (('macro_f1',) if task.num_labels > 2 else ())


def majority_baseline(task: Task, task_data: data_lib.TaskData) -> dict | None:
  """Dev scores of always predicting the most frequent training label (None for regression)."""
  if task.is_regression:
    return None
  majority = np.bincount(task_data.train.labels, minlength=task.num_labels).argmax()
  return {key: metrics_lib.compute(metric_names(task), np.full(len(dev.labels), majority), dev.labels)
          for key, dev in task_data.dev.items()}


def prepare(config, tokenizer) -> PreparedTask:
  task = TASKS[config.task]
  task_data = load_data(config, task)
  if config.train.max_train_examples:
    n, t = config.train.max_train_examples, task_data.train
    task_data.train = data_lib.Examples(t.texts[:n], t.labels[:n], t.indices[:n], t.skipped)
  arrays, length = encode_all(task_data, tokenizer, config.data.max_length)

  def evaluate(dev_outputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    scores, predictions = {}, {}
    for key, raw in dev_outputs.items():
      predictions[key] = outputs.to_predictions(raw, task)
      scores[key] = metrics_lib.compute(metric_names(task), predictions[key], task_data.dev[key].labels)
    return scores, predictions

  def write(workdir: pathlib.Path, dev_predictions: dict, test_outputs: dict[str, np.ndarray]) -> None:
    test_predictions = {name: outputs.to_predictions(raw, task_data.test_tasks[name])
                        for name, raw in test_outputs.items()}
    outputs.write_predictions(workdir, task, task_data, dev_predictions, test_predictions)

  counts = None if task.is_regression else np.bincount(task_data.train.labels, minlength=task.num_labels)
  return PreparedTask(
      name=task.name, outputs='sequence', labels=task.labels or (), is_regression=task.is_regression,
      length=length, train=arrays[('train', 'train')], dev={k: arrays[('dev', k)] for k in task.dev_files},
      test={k: arrays[('test', k)] for k in task_data.test}, num_train_examples=len(task_data.train.texts),
      evaluate=evaluate, write=write, headline=(next(iter(task.dev_files)), task.metrics[0]),
      train_label_counts=counts,
      extra_results={'majority_baseline': majority_baseline(task, task_data),
                     'skipped_train_rows': task_data.train.skipped})


SOURCE_HELP = "'glue_dir:PATH' or 'tfds:glue/TASK'"


def validate_source(config) -> None:
  task = TASKS[config.task]
  owner = next((t.name for t in TASKS.values() if task.name in t.predicts_also), None)
  require(owner is None, f"task: '{task.name}' has no training data; fine-tune '{owner}', whose run also "
          f'writes the {task.name} test predictions')
  require(config.data.source.startswith((data_lib.GLUE_DIR_SCHEME, 'tfds:')),
          f"data.source: expected 'glue_dir:PATH' or 'tfds:glue/{task.name}', got {config.data.source!r}")
  if config.data.source.startswith(data_lib.GLUE_DIR_SCHEME):
    root = data_lib.glue_dir(config.data.source)
    for name in ('train.tsv', *task.dev_files.values()):
      require((root / task.directory / name).is_file(),
              f'data.source: {root / task.directory / name} is missing (the official GLUE layout has '
              f'{task.directory}/{name})')


def uses_pairs(config) -> bool:
  return len(TASKS[config.task].text_columns) == 2
