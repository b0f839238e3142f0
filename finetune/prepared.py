"""What a task kind hands the fine-tuning loop: encoded arrays, and how to score and write its outputs.

Three kinds share the loop (finetune/train.py), the steps (finetune/steps.py) and the checkpoint layout:

  sequence  GLUE (finetune/glue_task.py): one label (or score) per example     outputs [rows, labels]
  tokens    NER on CoNLL files (finetune/ner_task.py): a tag per word          outputs [rows, length, tags]
  spans     SQuAD (finetune/qa_task.py): start and end of the answer           outputs [rows, length, 2]

A row is one model input: an example, or one window of a long sentence or context.
"""
import dataclasses
import pathlib
from typing import Callable

import numpy as np

INPUTS = ('tokens', 'token_type_ids', 'segment_ids')  # int32 [rows, length]; segment_ids 1 real, 0 padding
TARGETS = ('labels', 'start_positions', 'end_positions')  # what the loss reads, per kind


@dataclasses.dataclass
class PreparedTask:
  name: str  # config.task
  outputs: str  # 'sequence' | 'tokens' | 'spans' (pretrain.model.heads.Classifier)
  labels: tuple[str, ...]  # class or tag names; () for regression; ('start', 'end') for spans
  is_regression: bool
  length: int  # every split padded to it
  train: dict[str, np.ndarray]  # INPUTS and the targets: 'labels' [rows] or [rows, length], or start/end_positions
  dev: dict[str, dict[str, np.ndarray]]  # dev split key -> INPUTS (with targets, unused by prediction)
  test: dict[str, dict[str, np.ndarray]]  # test split key -> INPUTS
  num_train_examples: int  # examples (sentences, questions) behind the train rows
  # (dev outputs per key) -> (scores per key, predictions per key: what `write` writes)
  evaluate: Callable[[dict[str, np.ndarray]], tuple[dict[str, dict[str, float]], dict]]
  # (workdir, dev predictions of the best epoch, test outputs per key) -> writes WORKDIR/predictions/..., returns
  # results.json entries (NER: the test scores); called on process 0 only
  write: Callable[[pathlib.Path, dict, dict[str, np.ndarray]], dict | None]
  headline: tuple[str, str]  # (dev key, metric) the best epoch maximises
  train_label_counts: np.ndarray | None  # per class, for train.class_weights 'balanced'; None: not weighted
  extra_results: dict = dataclasses.field(default_factory=dict)  # results.json entries of the task kind

  @property
  def num_outputs(self) -> int:
    return 1 if self.is_regression else len(self.labels)

  @property
  def num_train_rows(self) -> int:
    return len(self.train['tokens'])

  def summary(self, scores: dict[str, dict[str, float]]) -> str:
    return ', '.join(f'{key} {name} {value:.4f}' for key, split in scores.items() for name, value in split.items()
                     if isinstance(value, float))
