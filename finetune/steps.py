"""Jitted fine-tuning steps over the train state {'step', 'params', 'opt_state', 'rng'} (as in pretraining).

Batches carry per-example `weights`: 0 marks the rows that pad the last batch of an epoch or an eval set. A train
step whose loss, gradients or updates are not all finite changes nothing but the step counter (as in pretraining);
its metrics['nonfinite'] is 1.
"""
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pretrain.masking import DROPOUT_STREAM
from pretrain.nonfinite import finite_update


@dataclasses.dataclass(frozen=True)
class FinetuneSteps:
  train: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (state, {'loss', 'grad_norm', 'nonfinite'})
  predict: Callable[[dict, dict], jax.Array]  # (params, batch) -> logits [batch, classes] or scores [batch]


def example_losses(outputs_bk: jax.Array, labels_b: jax.Array, regression: bool) -> jax.Array:
  """Squared error (STS-B) or softmax cross-entropy per example."""
  if regression:
    return jnp.square(outputs_bk[:, 0] - labels_b)
  return optax.softmax_cross_entropy_with_integer_labels(outputs_bk, labels_b)


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, regression: bool) -> FinetuneSteps:

  def forward(params: dict, batch: dict, dropout_key: jax.Array | None) -> jax.Array:
    model = nnx.merge(graphdef, params)
    return model(batch['tokens'], batch['token_type_ids'], batch['segment_ids'], dropout_key)

  def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
    rng = jax.random.wrap_key_data(state['rng'])
    dropout_key = jax.random.fold_in(jax.random.fold_in(rng, DROPOUT_STREAM), state['step'])

    def loss_fn(params):
      losses_b = example_losses(forward(params, batch, dropout_key), batch['labels'], regression)
      return jnp.sum(losses_b * batch['weights']) / jnp.maximum(jnp.sum(batch['weights']), 1.0)

    loss, grads = jax.value_and_grad(loss_fn)(state['params'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    grad_norm = optax.tree_utils.tree_norm(grads)
    params, opt_state, nonfinite = finite_update(state['params'], updates, opt_state, state['opt_state'], loss,
                                                 grad_norm)
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, {'loss': loss, 'grad_norm': grad_norm, 'nonfinite': nonfinite}

  def predict(params: dict, batch: dict) -> jax.Array:
    outputs_bk = forward(params, batch, None)
    return outputs_bk[:, 0] if regression else outputs_bk

  return FinetuneSteps(train=train_step, predict=predict)
