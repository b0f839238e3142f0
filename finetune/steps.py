"""Jitted fine-tuning steps over the train state {'step', 'params', 'opt_state', 'rng'} (as in pretraining).

Batches carry per-row `weights`: 0 marks the rows that pad the last batch of an epoch or an eval set. The loss is
the weighted mean over rows (sequence, spans) or over labelled tokens (tokens: a word's first piece), with
train.class_weights folded into the weights (finetune/class_weights.py). A train step whose loss, gradients or
updates are not all finite changes nothing but the step counter (as in pretraining); its metrics['nonfinite'] is 1.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from finetune.prepared import INPUTS
from pretrain.masking import DROPOUT_STREAM
from pretrain.nonfinite import finite_update


@dataclasses.dataclass(frozen=True)
class FinetuneSteps:
  train: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (state, {'loss', 'grad_norm', 'nonfinite'})
  predict: Callable[[dict, dict], jax.Array]  # (params, inputs) -> logits or scores (see make_steps)


def weighted_losses(outputs: jax.Array, batch: dict, kind: str, regression: bool,
                    class_weights: np.ndarray | None) -> tuple[jax.Array, jax.Array]:
  """(losses, weights), the same shape: squared error (STS-B) or softmax cross-entropy per row; per token for
  'tokens' (weight 0 off the labelled pieces); the mean of the start and end cross-entropies for 'spans'."""
  if kind == 'spans':
    ce = lambda logits_bt, position_b: optax.softmax_cross_entropy_with_integer_labels(logits_bt, position_b)
    losses_b = 0.5 * (ce(outputs[..., 0], batch['start_positions']) + ce(outputs[..., 1], batch['end_positions']))
    return losses_b, batch['weights']
  if regression:
    return jnp.square(outputs[:, 0] - batch['labels']), batch['weights']
  labels = batch['labels']
  weights = batch['weights'] if kind == 'sequence' else batch['weights'][:, None] * (labels >= 0)
  labels = jnp.maximum(labels, 0)  # (an ignored token's label; weight 0)
  if class_weights is not None:
    weights = weights * jnp.asarray(class_weights)[labels]
  return optax.softmax_cross_entropy_with_integer_labels(outputs, labels), weights


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, kind: str, regression: bool,
               class_weights: np.ndarray | None = None) -> FinetuneSteps:
  """predict gives float32 logits [rows, classes] (scores [rows] for regression), [rows, length, tags] for
  'tokens', [rows, length, 2] (start, end) for 'spans'."""

  def forward(params: dict, batch: dict, dropout_key: jax.Array | None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return model(*(batch[k] for k in INPUTS), dropout_key)

  def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
    rng = jax.random.wrap_key_data(state['rng'])
    dropout_key = jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), state['step'])

    def loss_fn(params):
      losses, weights = weighted_losses(forward(params, batch, dropout_key), batch, kind, regression, class_weights)
      total = jnp.sum(weights)
      return jnp.where(total > 0, jnp.sum(losses * weights) / jnp.where(total > 0, total, 1.0), 0.0)

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    grad_norm = optax.tree_utils.tree_norm(grads)
    params, opt_state, nonfinite = finite_update(state['params'], updates, opt_state, state['opt_state'], loss,
                                                 grad_norm)
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, {'loss': loss, 'grad_norm': grad_norm, 'nonfinite': nonfinite}

  def predict(params: dict, batch: dict) -> jax.Array:
    outputs = forward(params, batch, None)
    return outputs[:, 0] if regression else outputs

  return FinetuneSteps(train=train_step, predict=predict)
