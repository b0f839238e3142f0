"""GLUE metrics exactly as GLUE defines them, in numpy: accuracy; F1 of the positive class (MRPC, QQP);
Matthews correlation (CoLA); Pearson and Spearman correlation (STS-B); and macro-F1 (the mean of the classes' F1,
reported beside the official metric of tasks with more than two classes). Checked against scikit-learn/scipy."""
import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def _binary_counts(predictions, labels) -> tuple[int, int, int, int]:
  p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
  return int(np.sum(p & y)), int(np.sum(~p & ~y)), int(np.sum(p & ~y)), int(np.sum(~p & y))


def f1(predictions: np.ndarray, labels: np.ndarray) -> float:
  """F1 of class 1; 0 when there are no true or predicted positives (scikit-learn's convention)."""
  tp, _, fp, fn = _binary_counts(predictions, labels)
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def macro_f1(predictions: np.ndarray, labels: np.ndarray) -> float:
  """The mean over classes of each class's F1, the classes being those in labels or predictions (scikit-learn's
  f1_score(average='macro'))."""
  predictions, labels = np.asarray(predictions), np.asarray(labels)
  classes = np.union1d(predictions, labels)
  per_class = [2 * np.sum((predictions == c) & (labels == c)) /
               (np.sum(predictions == c) + np.sum(labels == c)) for c in classes]
  return float(np.mean(per_class)) if per_class else 0.0


def matthews_corrcoef(predictions: np.ndarray, labels: np.ndarray) -> float:
  """Binary Matthews correlation; 0 when a row or column of the confusion matrix is empty."""
  tp, tn, fp, fn = _binary_counts(predictions, labels)
  denominator = np.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
  return float((tp * tn - fp * fn) / denominator) if denominator else 0.0


def pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
  x = np.asarray(predictions, np.float64) - np.mean(predictions)
  y = np.asarray(labels, np.float64) - np.mean(labels)
  denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / denominator) if denominator else 0.0


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """Ranks 1..n with ties given their mean rank (scipy.stats.rankdata's 'average')."""
  values = np.asarray(values)
  order = np.argsort(values, kind='mergesort')
  sorted_values = values[order]
  starts = np.r_[True, sorted_values[1:] != sorted_values[:-1]]
  group = np.cumsum(starts) - 1
  first = np.flatnonzero(starts)
  ends = np.r_[first[1:], len(values)]
  mean_rank = (first + ends + 1) / 2.0  # mean of the 1-based ranks first+1 .. end
  ranks = np.empty(len(values))
  ranks[order] = mean_rank[group]
  return ranks


def spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
  return pearson(_average_ranks(predictions), _average_ranks(labels))


METRICS = {'accuracy': accuracy, 'f1': f1, 'macro_f1': macro_f1, 'matthews_corrcoef': matthews_corrcoef, 'pearson': pearson,
           'spearman': spearman}


def compute(metric_names: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """{name: value} for each named metric, e.g. compute(('f1', 'accuracy'), preds, labels)."""
  return {name: METRICS[name](predictions, labels) for name in metric_names}
