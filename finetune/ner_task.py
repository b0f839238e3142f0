"""Named-entity recognition on CoNLL-layout files (`conll:DIR`) as a PreparedTask (kind 'tokens').

Rows are windows of whole words (finetune/word_windows.py); a word's tag is predicted on its first piece, from
the window where the word has the most context. Dev (and test, when its file has tags) scores: entity-level
precision, recall and F1 by CoNLL's rules, macro-F1 over the entity types, token accuracy
(finetune/entity_metrics.py). Predictions: WORKDIR/predictions/dev.txt and test.txt, `word gold predicted` per
line (conlleval's input).
"""
import pathlib

import numpy as np

from finetune import conll, entity_metrics, word_windows
from finetune.data import source_dir
from finetune.features import length_for
from finetune.prepared import PreparedTask
from pretrain.runtime.errors import require

SCHEME = 'conll:'


def _root(config) -> pathlib.Path:
  return source_dir(config.data.source, SCHEME, 'ner', 'CoNLL')


def validate_source(config) -> None:
  conll.split_files(_root(config))
  require(config.data.stride >= 0, f'data.stride: must be >= 0, got {config.data.stride}')
  require(config.data.stride < config.data.max_length - 2,
          f'data.stride: {config.data.stride} leaves no new pieces in a window of data.max_length '
          f'{config.data.max_length}')


def uses_pairs(config) -> bool:
  del config
  return False


def prepare(config, tokenizer) -> PreparedTask:
  files = conll.split_files(_root(config))
  sentences = {split: conll.read_conll(path) for split, path in files.items() if path is not None}
  if config.train.max_train_examples:
    sentences['train'] = sentences['train'][:config.train.max_train_examples]
  labels = conll.label_list(sentences['train'])
  label_id = {tag: i for i, tag in enumerate(labels)}
  train_ids = [[label_id[t] for t in s.tags] for s in sentences['train']]
  build = lambda split, ids: word_windows.build([s.words for s in sentences[split]], ids, tokenizer,
                                                config.data.max_length, config.data.stride)
  windows = {split: build(split, train_ids if split == 'train' else None) for split in sentences}
  length = length_for(max(w.longest for w in windows.values()), config.data.max_length)
  arrays = {split: w.arrays(length) for split, w in windows.items()}

  def tags(split: str, logits: np.ndarray) -> list[list[str]]:
    num_words = [len(s.words) for s in sentences[split]]
    return [[labels[i] for i in ids] for ids in word_windows.word_predictions(windows[split], logits, num_words)]

  def scores(split: str, predicted: list[list[str]]) -> dict[str, float]:
    found = entity_metrics.entity_scores([s.tags for s in sentences[split]], predicted)
    return {k: found[k] for k in ('f1', 'precision', 'recall', 'macro_f1', 'token_accuracy')}

  def evaluate(dev_outputs: dict[str, np.ndarray]) -> tuple[dict, dict]:
    predicted = tags('dev', dev_outputs['dev'])
    return {'dev': scores('dev', predicted)}, {'dev': predicted}

  def write(workdir: pathlib.Path, dev_predictions: dict, test_outputs: dict[str, np.ndarray]) -> dict:
    predicted = {'dev': dev_predictions['dev'], **{k: tags(k, v) for k, v in test_outputs.items()}}
    for split, split_tags in predicted.items():
      conll.write_conll(workdir / 'predictions' / f'{split}.txt', sentences[split], split_tags)
    labelled_test = 'test' in predicted and any(t != 'O' for s in sentences['test'] for t in s.tags)
    return {'test': scores('test', predicted['test'])} if labelled_test else {}

  counts = np.bincount([i for ids in train_ids for i in ids], minlength=len(labels))
  return PreparedTask(
      name='ner', outputs='tokens', labels=tuple(labels), is_regression=False, length=length,
      train=arrays['train'], dev={'dev': arrays['dev']}, test={'test': arrays['test']} if 'test' in arrays else {},
      num_train_examples=len(sentences['train']), evaluate=evaluate, write=write, headline=('dev', 'f1'),
      train_label_counts=counts, extra_results={'labels': list(labels)})
