"""The predictions a GLUE fine-tuning run writes, of its best epoch (results.json: finetune/train.py).

  predictions/dev*.tsv        index, prediction, label  (MNLI: dev_matched.tsv, dev_mismatched.tsv)
  predictions/<NAME>.tsv      index, prediction: the GLUE leaderboard's file for each test set (SST-2.tsv,
                              MNLI-m.tsv, AX.tsv, ...), labels as the task's files spell them
"""
import pathlib

import numpy as np

from finetune.data import TaskData
from finetune.tasks import Task
from pretrain.runtime.files import write_atomic


def to_predictions(outputs: np.ndarray, task: Task) -> np.ndarray:
  """Class ids (argmax of the logits) or, for regression, the scores."""
  return outputs.astype(np.float32) if task.is_regression else np.argmax(outputs, axis=-1).astype(np.int32)


def label_text(predictions: np.ndarray, task: Task) -> list[str]:
  if task.is_regression:
    return [f'{float(p):.3f}' for p in predictions]
  return [task.labels[int(p)] for p in predictions]


def write_tsv(path: pathlib.Path, header: list[str], columns: list[list[str]]) -> None:
  lines = ['\t'.join(header)] + ['\t'.join(row) for row in zip(*columns)]
  write_atomic(path, '\n'.join(lines) + '\n')


def write_predictions(workdir: pathlib.Path, task: Task, task_data: TaskData, dev_predictions: dict,
                      test_predictions: dict) -> None:
  directory = workdir / 'predictions'
  directory.mkdir(exist_ok=True)
  for key, predictions in dev_predictions.items():
    examples = task_data.dev[key]
    write_tsv(directory / f'{key}.tsv', ['index', 'prediction', 'label'],
              [examples.indices, label_text(predictions, task), label_text(examples.labels, task)])
  for name, predictions in test_predictions.items():
    write_tsv(directory / f'{name}.tsv', ['index', 'prediction'],
              [task_data.test[name].indices, label_text(predictions, task_data.test_tasks[name])])
