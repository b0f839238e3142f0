"""Pure train and eval steps over the train state {'step', 'params', 'opt_state', 'rng'}.

`params` is a plain nested dict of arrays (nnx.split state as a pure dict); the model is rebuilt from the
graphdef inside the traced function, so the steps jit as pure functions with explicit shardings.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from pretrain import objectives

EVAL_STEP = 2**30  # the 'step' eval masks are drawn from: fixed, so every evaluation sees the same masks


@dataclasses.dataclass(frozen=True)
class StepFunctions:
  train: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (state, metrics)
  eval: Callable[..., dict]  # (params, rng, batch, batch_index) -> loss/correct/weight sums


def make_steps(graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, objective: str,
               mlm_settings: objectives.MlmSettings | None) -> StepFunctions:

  def examples(batch: dict, rng: jax.Array, step: jax.Array) -> dict:
    if objective == 'clm':
      return objectives.clm(batch)
    keys_b = objectives.example_keys(rng, objectives.MASK_STREAM, step, batch['tokens'].shape[0])
    return objectives.mlm(batch, keys_b, mlm_settings)

  def loss_sums(params: dict, batch: dict, rng: jax.Array, step: jax.Array, train: bool) -> dict:
    ex = examples(batch, rng, step)
    dropout_key = (jax.random.fold_in(jax.random.fold_in(rng, objectives.DROPOUT_STREAM), step)
                   if train else None)
    model = nnx.merge(graphdef, params)
    logits_btv = model(ex['inputs'], predict_positions=ex['positions'], segment_ids=batch['segment_ids'],
                       positions=batch['positions'], dropout_key=dropout_key)
    return objectives.weighted_cross_entropy(logits_btv, ex['targets'], ex['weights'])

  def train_step(state: dict, batch: dict) -> tuple[dict, dict]:
    rng = jax.random.wrap_key_data(state['rng'])

    def loss_fn(params):
      sums = loss_sums(params, batch, rng, state['step'], train=True)
      return sums['loss_sum'] / jnp.maximum(sums['weight_sum'], 1.0), sums

    (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics = {'loss': loss, 'accuracy': sums['correct_sum'] / jnp.maximum(sums['weight_sum'], 1.0),
               'grad_norm': optax.tree_utils.tree_norm(grads), 'predicted_tokens': sums['weight_sum']}
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_state': opt_state, 'rng': state['rng']}
    return new_state, metrics

  def eval_step(params: dict, rng_data: jax.Array, batch: dict, batch_index: jax.Array) -> dict:
    rng = jax.random.fold_in(jax.random.wrap_key_data(rng_data), batch_index)
    return loss_sums(params, batch, rng, jnp.asarray(EVAL_STEP), train=False)

  return StepFunctions(train=train_step, eval=eval_step)


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation, seed: int) -> dict[str, Any]:
  """The train state of a freshly built model (call under jit with out_shardings to init sharded)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': optimizer.init(params),
          'rng': jax.random.key_data(jax.random.key(seed))}
