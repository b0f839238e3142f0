"""train.class_weights: per-class weights of the cross-entropy, for imbalanced labels (sequence and token tasks).

  ''          every class weighs 1 (the default)
  'balanced'  n / (classes * count_c) from the training label counts (scikit-learn's 'balanced'; a class absent
              from the training data weighs 1)
  '1,5,5'     one weight per class, in the order of the task's labels (results.json lists them)

The loss is the weighted mean, sum_i w(y_i) loss_i / sum_i w(y_i), as torch.nn.CrossEntropyLoss(weight=...).
"""
import numpy as np

from pretrain.runtime.errors import ConfigError, require

FIELD = 'train.class_weights'


def parse(spec) -> str | tuple[float, ...]:
  """'' | 'balanced' | weights; validated without the data (the number of classes is checked by `resolve`)."""
  if isinstance(spec, (list, tuple)):
    values = spec
  else:
    spec = str(spec).strip()
    if spec in ('', 'balanced'):
      return spec
    values = spec.split(',')
  try:
    weights = tuple(float(v) for v in values)
  except ValueError:
    raise ConfigError(f"{FIELD}: expected '', 'balanced' or comma-separated numbers, got {spec!r}") from None
  require(weights and all(np.isfinite(w) and w >= 0 for w in weights) and any(w > 0 for w in weights),
          f'{FIELD}: weights must be finite, >= 0 and not all 0, got {spec!r}')
  return weights


def resolve(spec, labels: tuple[str, ...], train_label_counts: np.ndarray | None) -> np.ndarray | None:
  """float32 [classes], or None when unweighted. train_label_counts None: the task has no classes to weigh."""
  parsed = parse(spec)
  if parsed == '':
    return None
  require(train_label_counts is not None, f'{FIELD}: only classification and token classification tasks have '
          f'classes to weigh, got {spec!r}')
  if parsed == 'balanced':
    counts = np.asarray(train_label_counts, np.float64)
    weights = np.where(counts > 0, counts.sum() / (len(counts) * np.maximum(counts, 1)), 1.0)
    return weights.astype(np.float32)
  require(len(parsed) == len(labels), f'{FIELD}: {len(parsed)} weights for {len(labels)} classes {labels}')
  return np.asarray(parsed, np.float32)
