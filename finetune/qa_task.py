"""Extractive question answering on SQuAD v1.1 / v2.0 files (`squad:DIR`) as a PreparedTask (kind 'spans').

Rows are [CLS] question [SEP] context-window [SEP] (finetune/span_windows.py); the head gives start and end
logits per token; an answer is the best span of at most eval.max_answer_length pieces over the n-best starts and
ends of all of a question's windows, cut from the original context by the tokenizer's character offsets. Scores
are the official scripts' exact match and F1 (x100, finetune/squad_metrics.py). v2.0: a question is answered ''
when its null score (the [CLS] span) beats its best span by more than a threshold chosen on dev (the official
best_f1_thresh); dev scores are at that threshold, which results.json reports.
Predictions: WORKDIR/predictions/predictions.json (the official format) and, for v2.0, null_odds.json (the
official script's --na-prob-file: null score minus best span score).
"""
import json
import pathlib

import numpy as np

from finetune import span_windows, squad, squad_metrics
from finetune.data import source_dir
from finetune.features import length_for
from finetune.prepared import PreparedTask
from pretrain.runtime.errors import require
from pretrain.runtime.files import write_atomic

SCHEME = 'squad:'


def _root(config) -> pathlib.Path:
  return source_dir(config.data.source, SCHEME, 'squad', 'SQuAD')


def validate_source(config) -> None:
  squad.split_files(_root(config), version=config.data.version or None)
  data, max_length = config.data, config.data.max_length
  require(0 < data.max_query_length < max_length - 3, f'data.max_query_length: must be in (0, data.max_length - 3), '
          f'got {data.max_query_length}')
  require(0 <= data.doc_stride < max_length - data.max_query_length - 3,
          f'data.doc_stride: {data.doc_stride} leaves no new context pieces in a window of data.max_length '
          f'{max_length} with data.max_query_length {data.max_query_length}')
  require(not config.train.class_weights, f'train.class_weights: SQuAD has no classes to weigh, got '
          f'{config.train.class_weights!r}')
  for key in ('n_best', 'max_answer_length'):
    require(config.eval[key] > 0, f'eval.{key}: must be positive, got {config.eval[key]}')


def uses_pairs(config) -> bool:
  del config
  return True


def prepare(config, tokenizer) -> PreparedTask:
  files = squad.split_files(_root(config), version=config.data.version or None)
  train, _ = squad.read_squad(files['train'])
  dev, version = squad.read_squad(files['dev'])
  if config.train.max_train_examples:
    train = train[:config.train.max_train_examples]
  with_null = version == '2.0' or any(e.is_impossible for e in dev)
  build = lambda examples: span_windows.build(examples, tokenizer, config.data.max_length, config.data.doc_stride,
                                              config.data.max_query_length)
  windows = {'train': build(train), 'dev': build(dev)}
  length = length_for(max(w.longest for w in windows.values()), config.data.max_length)
  arrays = {split: w.arrays(length) for split, w in windows.items()}
  def evaluate(dev_outputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    outputs = dev_outputs['dev']
    best, null_diff = span_windows.decode(windows['dev'], dev, outputs[..., 0], outputs[..., 1],
                                          config.eval.n_best, config.eval.max_answer_length)
    if not with_null:
      found = squad_metrics.evaluate(dev, best)
      return {'dev': {'exact': found['exact'], 'f1': found['f1']}}, {'dev': (best, None)}
    threshold = squad_metrics.evaluate(dev, best, null_diff)['best_f1_thresh']
    answers = span_windows.with_null_threshold(best, null_diff, threshold)
    found = squad_metrics.evaluate(dev, answers)
    keys = ('exact', 'f1', 'HasAns_exact', 'HasAns_f1', 'NoAns_exact', 'NoAns_f1')
    return {'dev': {**{k: found[k] for k in keys if k in found}, 'no_answer_threshold': float(threshold)}}, \
        {'dev': (answers, null_diff)}

  def write(workdir: pathlib.Path, dev_predictions: dict, test_outputs: dict) -> dict:
    del test_outputs  # (SQuAD's test set is not public)
    answers, null_diff = dev_predictions['dev']
    squad.write_predictions(workdir / 'predictions' / 'predictions.json', answers)
    if null_diff is not None:
      write_atomic(workdir / 'predictions' / 'null_odds.json',
                   json.dumps({k: float(v) for k, v in null_diff.items()}, indent=1) + '\n')
    return {}

  return PreparedTask(
      name='squad', outputs='spans', labels=('start', 'end'), is_regression=False, length=length,
      train=arrays['train'], dev={'dev': arrays['dev']}, test={}, num_train_examples=len(train), evaluate=evaluate,
      write=write, headline=('dev', 'f1'), train_label_counts=None,
      extra_results={'squad_version': '2.0' if with_null else '1.1', 'num_dev_rows': len(arrays['dev']['tokens'])})
