"""Named-entity scores as conlleval and seqeval (default mode) compute them, in numpy: entity precision, recall
and F1 (an entity counts when its type and both boundaries match), macro F1 over entity types, token accuracy;
and macro F1 of sentence classes (scikit-learn's f1_score(average='macro')). Checked against seqeval/scikit-learn.
"""
import collections

import numpy as np

from finetune.conll import to_iob2
from pretrain.runtime.errors import require


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
  """(type, start, end exclusive) of each entity. Not strict (conlleval): an I-X after O or after another type
  begins an entity, as B-X would."""
  for tag in tags:
    require(tag == 'O' or tag[:2] in ('B-', 'I-'), f'entity tag {tag!r} is not O, B-TYPE or I-TYPE')
  found = []
  for i, tag in enumerate(to_iob2(tags)):
    if tag.startswith('B-'):
      found.append([tag[2:], i, i + 1])
    elif tag.startswith('I-'):
      found[-1][2] = i + 1  # to_iob2: an I-X always continues an X
  return [(t, start, end) for t, start, end in found]


def _divide(a: float, b: float) -> float:
  return a / b if b else 0.0


def _prf(tp: int, n_pred: int, n_gold: int) -> tuple[float, float, float]:
  """precision, recall, F1; 0.0 where a denominator is 0 (seqeval's zero_division default)."""
  precision, recall = _divide(tp, n_pred), _divide(tp, n_gold)
  return precision, recall, _divide(2 * precision * recall, precision + recall)


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict:
  """{'precision', 'recall', 'f1' (micro over entities), 'macro_f1' (mean per-type F1 over the types in gold or
  predicted), 'token_accuracy', 'per_type': {type: {'precision', 'recall', 'f1', 'support'}}} of IOB2 tags."""
  require(len(gold) == len(predicted), f'{len(predicted)} predicted sentences for {len(gold)} gold ones')
  gold_set, pred_set = set(), set()
  same = tokens = 0
  for i, (g, p) in enumerate(zip(gold, predicted)):
    require(len(g) == len(p), f'sentence {i}: {len(p)} predicted tags for {len(g)} gold ones')
    gold_set.update((i, *e) for e in entities(g))
    pred_set.update((i, *e) for e in entities(p))
    same += sum(a == b for a, b in zip(g, p))
    tokens += len(g)
  correct = gold_set & pred_set
  n_correct, n_pred, n_gold = (collections.Counter(e[1] for e in s) for s in (correct, pred_set, gold_set))
  per_type = {}
  for t in sorted(n_pred | n_gold):
    precision, recall, f1 = _prf(n_correct[t], n_pred[t], n_gold[t])
    per_type[t] = {'precision': precision, 'recall': recall, 'f1': f1, 'support': n_gold[t]}
  precision, recall, f1 = _prf(len(correct), len(pred_set), len(gold_set))
  macro = float(np.mean([s['f1'] for s in per_type.values()])) if per_type else 0.0
  return {'precision': precision, 'recall': recall, 'f1': f1, 'macro_f1': macro,
          'token_accuracy': _divide(same, tokens), 'per_type': per_type}
