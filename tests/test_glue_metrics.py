"""GLUE metrics equal scikit-learn's and scipy's on random inputs, ties and degenerate cases included."""
import numpy as np
import pytest

from finetune import metrics

sklearn_metrics = pytest.importorskip('sklearn.metrics')
scipy_stats = pytest.importorskip('scipy.stats')


@pytest.mark.parametrize('seed', range(5))
def test_classification_metrics_match_scikit_learn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 300))
  labels, predictions = rng.integers(0, 2, n), rng.integers(0, 2, n)
  if seed == 0:
    predictions[:] = 0  # no predicted positives: F1 and MCC are 0 by convention
  assert metrics.accuracy(predictions, labels) == pytest.approx(sklearn_metrics.accuracy_score(labels, predictions))
  assert metrics.f1(predictions, labels) == pytest.approx(
      sklearn_metrics.f1_score(labels, predictions, zero_division=0.0))
  assert metrics.matthews_corrcoef(predictions, labels) == pytest.approx(
      sklearn_metrics.matthews_corrcoef(labels, predictions), abs=1e-12)


@pytest.mark.parametrize('seed', range(5))
def test_correlations_match_scipy_with_ties(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(3, 300))
  labels = np.round(rng.uniform(0, 5, n) * 5) / 5  # STS-B-like scores with many ties
  predictions = labels + rng.normal(0, 1 + seed, n)
  if seed == 1:
    predictions = np.round(predictions)  # ties on both sides
  assert metrics.pearson(predictions, labels) == pytest.approx(scipy_stats.pearsonr(predictions, labels)[0])
  assert metrics.spearman(predictions, labels) == pytest.approx(scipy_stats.spearmanr(predictions, labels)[0])


def test_compute_names_each_metric():
  out = metrics.compute(('f1', 'accuracy'), np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1]))
  assert out == {'f1': pytest.approx(0.8), 'accuracy': 0.75}


@pytest.mark.parametrize('seed', range(5))
def test_macro_f1_matches_scikit_learn(seed):
  rng = np.random.default_rng(seed)
  n = int(rng.integers(1, 300))
  labels, predictions = rng.integers(0, 3, n), rng.integers(0, 3 + seed % 2, n)  # seed 1, 3: a class never true
  if seed == 2:
    predictions[:] = 1  # one class predicted: the others' F1 are 0
  assert metrics.macro_f1(predictions, labels) == pytest.approx(
      sklearn_metrics.f1_score(labels, predictions, average='macro', zero_division=0.0))
