"""Pure train and eval steps over the train state {'step', 'params', 'opt_state', 'rng'}.

`params` is a plain nested dict of arrays (nnx.split state as a pure dict); the model is rebuilt from the
graphdef inside the traced function, so the steps jit as pure functions with explicit shardings.

Gradient accumulation: with `microbatches` k > 1 the global batch runs as k microbatches inside one jitted
step (a lax.scan), microbatch j holding rows j, j+k, j+2k, ... so every device keeps an equal share of each.
The objective (MLM masks) is drawn for the whole batch first, so each loss term's normaliser (the batch's
number of predicted tokens) is known; each microbatch's gradients are those of its share of the batch's mean
loss, and summing them gives the whole batch's. Masks and dropout are drawn per example (seed, step, row in the
global batch): k microbatches give the same update as one step on the whole batch.

The objective (pretrain/objectives.py) says what the model reads of a batch, the loss terms and their
normalisers, and the metrics; the loss optimised is the sum of each term's sum over its normaliser (MLM with a
sentence task: the MLM loss plus the sentence head's mean cross-entropy, as BertForPreTraining).

A step whose loss, gradients or updates are not all finite changes nothing but the step counter (the batch is
consumed); metrics['nonfinite'] is 1 for it, and the loop counts such steps.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pretrain import masking
from pretrain.nonfinite import finite_update
from pretrain.runtime.sharding import constrain

EVAL_STEP = 2**30  # the 'step' eval masks are drawn from: fixed, so every evaluation sees the same masks


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  train: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (state, metrics)
  grads: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (gradients of the mean loss, loss sums)
  eval: Callable[..., dict]  # (params, rng, batch, batch_index) -> loss/correct/weight sums


def split_microbatches(tree: Any, k: int) -> Any:
  """[batch, ...] leaves -> [k, batch // k, ...]: microbatch j holds rows j, j+k, j+2k, ..."""
  def split(x):
    x_bk = x.reshape(x.shape[0] // k, k, *x.shape[1:])
    x_kb = jnp.moveaxis(x_bk, 1, 0)
    return constrain(x_kb, (None, 'batch') + (None,) * (x.ndim - 1))
  return jax.tree.map(split, tree)


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, objective,
               microbatches: int = 1) -> StepFunctions:

  def examples(batch: dict, rng: jax.Array, step: jax.Array) -> dict:
    """The objective's inputs/targets/weights (drawn per example) and each row's example index."""
    example_ids = jnp.arange(batch['tokens'].shape[0])
    return {**objective.examples(batch, rng, step, example_ids), 'example_ids': example_ids}

  def loss_sums(params: dict, batch: dict, ex: dict, rng: jax.Array, step: jax.Array, train: bool) -> dict:
    dropout_keys_b = (masking.example_keys(rng, masking.DROPOUT_STREAM, step, ex['example_ids'])
                      if train else None)
    return objective.loss_sums(nnx.merge(graphdef, params), batch, ex, dropout_keys_b)

  def mean_grads(state: dict, batch: dict) -> tuple[dict, dict]:
    """Gradients of the batch's mean loss, and the loss/accuracy sums, accumulated over the microbatches."""
    rng, step = jax.random.wrap_key_data(state['rng']), state['step']
    ex = examples(batch, rng, step)
    normalizers = objective.normalizers(ex)

    def loss_fn(params, batch, ex):
      sums = loss_sums(params, batch, ex, rng, step, train=True)
      return sum(sums[k] / normalizers[k] for k in normalizers), sums

    grad_fn = jax.grad(loss_fn, has_aux=True)
    if microbatches == 1:
      return grad_fn(state['params'], batch, ex)
    microbatches_kb = split_microbatches((batch, ex), microbatches)

    def accumulate(carry, microbatch):
      grads, sums = grad_fn(state['params'], *microbatch)
      return jax.tree.map(jnp.add, carry, (grads, sums)), None

    shapes = jax.eval_shape(grad_fn, state['params'], *jax.tree.map(lambda x: x[0], microbatches_kb))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    return jax.lax.scan(accumulate, zeros, microbatches_kb)[0]

  def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
    grads, sums = mean_grads(state, batch)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    grad_norm = optax.tree_utils.tree_norm(grads)
    # A non-finite loss, gradient or update leaves the parameters and optimizer state as they were. Only the loss
    # sums are checked: what train_metrics does not log (CLM's accuracy argmax over the vocabulary) is then not
    # computed at all.
    losses = {k: v for k, v in sums.items() if k.endswith('loss_sum')}
    params, opt_state, nonfinite = finite_update(state['params'], updates, opt_state, state['opt_state'], losses,
                                                 grad_norm)
    metrics = {**objective.train_metrics(sums), 'grad_norm': grad_norm, 'predicted_tokens': sums['weight_sum'],
               'nonfinite': nonfinite}
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, metrics

  def eval_step(params: dict, rng_data: jax.Array, batch: dict, batch_index: jax.Array) -> dict:
    rng, step = jax.random.fold_in(jax.random.wrap_key_data(rng_data), batch_index), jnp.asarray(EVAL_STEP)
    return loss_sums(params, batch, examples(batch, rng, step), rng, step, train=False)

  return StepFunctions(train=train_step, grads=mean_grads, eval=eval_step)
