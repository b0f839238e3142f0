"""SQuAD metrics as the official evaluation scripts compute them (v1.1 and v2.0): exact match and token F1 of
normalised answers, the max over the gold answers, as percentages; for v2.0 also the has-answer / no-answer
breakdown and, given no-answer probabilities, the best threshold (find_best_thresh).

The two scripts differ in three places, kept here: an empty answer (v2.0: F1 1 if both are empty; v1.1: 0), gold
answers that normalise to '' (v2.0 drops them, '' when none is left; v1.1 keeps them), and questions without a
prediction (v2.0 leaves them out of the total; v1.1 counts them as 0).
"""
import collections
import re
import string
from collections.abc import Sequence

from absl import logging

from finetune.squad import QaExample
from pretrain.runtime.errors import require

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r'\b(a|an|the)\b', re.UNICODE)


def normalize_answer(text: str) -> str:
  """Lower case, no punctuation, no articles (whole words a/an/the), whitespace collapsed to single spaces."""
  text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
  return ' '.join(_ARTICLES.sub(' ', text).split())


def exact_match(prediction: str, truth: str) -> int:
  return int(normalize_answer(prediction) == normalize_answer(truth))


def f1(prediction: str, truth: str, *, version: str = '2.0') -> float:
  """Token F1 of the normalised answers. v2.0: an empty side gives 1 if both are empty, else 0; v1.1: 0."""
  predicted, gold = normalize_answer(prediction).split(), normalize_answer(truth).split()
  if version == '2.0' and (not predicted or not gold):
    return float(predicted == gold)
  same = sum((collections.Counter(predicted) & collections.Counter(gold)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(predicted), same / len(gold)
  return 2 * precision * recall / (precision + recall)


def gold_answers(example: QaExample, version: str = '2.0') -> list[str]:
  """The texts a prediction is scored against (v2.0: those that normalise to something, else [''])."""
  texts = [text for text, _ in example.answers]
  if version == '2.0':
    texts = [text for text in texts if normalize_answer(text)] or ['']
  return texts


def _raw_scores(examples: Sequence[QaExample], predictions: dict[str, str],
                version: str) -> tuple[dict[str, float], dict[str, float]]:
  exact, f1s = {}, {}
  for example in examples:
    if example.id not in predictions:
      continue
    prediction, golds = predictions[example.id], gold_answers(example, version)
    exact[example.id] = max(exact_match(prediction, gold) for gold in golds)
    f1s[example.id] = max(f1(prediction, gold, version=version) for gold in golds)
  return exact, f1s


def _best_threshold(predictions: dict[str, str], scores: dict[str, float], no_answer: dict[str, float],
                    has_answer: dict[str, bool]) -> tuple[float, float]:
  """find_best_thresh of the v2.0 script: predicting no answer above a threshold, the best total score (%)
  over the thresholds at each question's probability (0.0: no answers predicted from probabilities)."""
  score = best = sum(1 for has in has_answer.values() if not has)
  threshold = 0.0
  for qid in sorted(no_answer, key=lambda k: no_answer[k]):
    if qid not in scores:
      continue
    score += scores[qid] if has_answer[qid] else (-1 if predictions[qid] else 0)
    if score > best:
      best, threshold = score, no_answer[qid]
  return 100.0 * best / max(len(scores), 1), threshold


def evaluate(examples: Sequence[QaExample], predictions: dict[str, str],
             no_answer_probabilities: dict[str, float] | None = None, *, version: str | None = None,
             no_answer_threshold: float = 1.0) -> dict:
  """{'exact', 'f1', 'total'} (percentages), for v2.0 also HasAns_/NoAns_ exact and f1 (each when such questions
  exist) and, with no_answer_probabilities, best_exact(_thresh) and best_f1(_thresh).

  version: '1.1' or '2.0'; None: '2.0' when an example is impossible. As in the v2.0 script, questions whose
  no-answer probability exceeds no_answer_threshold (its --na-prob-thresh, 1.0) count as predicted no-answer in
  exact/f1 and the breakdown; the best_* values use the raw predictions. Questions without a prediction: v2.0
leaves them out of every total (the script itself fails on them in HasAns/NoAns), v1.1 scores them 0.
  """
  require(examples, 'SQuAD evaluation: no examples')
  version = version or ('2.0' if any(e.is_impossible for e in examples) else '1.1')
  require(version in ('1.1', '2.0'), f'SQuAD evaluation: version {version!r} is not 1.1 or 2.0')
  missing = [e.id for e in examples if e.id not in predictions]
  if missing:
    logging.warning('SQuAD evaluation: %d questions have no prediction (first: %s)', len(missing), missing[0])
  exact, f1s = _raw_scores(examples, predictions, version)
  if version == '1.1':
    total = len(examples)
    return {'exact': 100.0 * sum(exact.values()) / total, 'f1': 100.0 * sum(f1s.values()) / total, 'total': total}

  has_answer = {e.id: bool(e.answers) for e in examples}
  no_answer = no_answer_probabilities if no_answer_probabilities is not None else {k: 0.0 for k in predictions}
  unscored = [qid for qid in exact if qid not in no_answer]
  require(not unscored, f'SQuAD evaluation: {len(unscored)} predictions have no no-answer probability '
          f'(first: {unscored[0] if unscored else ""})')

  def thresholded(scores: dict[str, float]) -> dict[str, float]:
    return {qid: float(not has_answer[qid]) if no_answer[qid] > no_answer_threshold else s
            for qid, s in scores.items()}

  exact_t, f1_t = thresholded(exact), thresholded(f1s)

  def summary(qids: list[str]) -> dict:
    total = len(qids)
    return {'exact': 100.0 * sum(exact_t[q] for q in qids) / total if total else 0.0,
            'f1': 100.0 * sum(f1_t[q] for q in qids) / total if total else 0.0, 'total': total}

  result = summary(list(exact_t))
  for name, wanted in (('HasAns', True), ('NoAns', False)):
    qids = [qid for qid in exact_t if has_answer[qid] == wanted]
    if any(has == wanted for has in has_answer.values()):
      result.update({f'{name}_{key}': value for key, value in summary(qids).items()})
  if no_answer_probabilities is not None:
    result['best_exact'], result['best_exact_thresh'] = _best_threshold(predictions, exact, no_answer, has_answer)
    result['best_f1'], result['best_f1_thresh'] = _best_threshold(predictions, f1s, no_answer, has_answer)
  return result
