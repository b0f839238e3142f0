"""What a fine-tuning run writes: results.json, and predictions of the best epoch.

  results.json                {"task": "sst2", "dev": {"accuracy": 0.912}, "best_epoch": 2, "epochs": [...]}
  predictions/dev*.tsv        index, prediction, label  (MNLI: dev_matched.tsv, dev_mismatched.tsv)
  predictions/<NAME>.tsv      index, prediction: the GLUE leaderboard's file for each test set (SST-2.tsv,
                              MNLI-m.tsv, AX.tsv, ...), labels as the task's files spell them
"""
import json
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


def write(workdir: pathlib.Path, results: dict, task: Task, task_data: TaskData, dev_predictions: dict,
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
  write_atomic(workdir / 'results.json', json.dumps(results, indent=2) + '\n')


def summary(results: dict, task: Task) -> str:
  return ', '.join(f'{split} {name} {value:.4f}' for split in task.dev_files
                   for name, value in results[split].items())
