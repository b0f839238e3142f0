"""make_trainer: everything compiled for one (settings, mesh): the sharded train-state layout and the jitted steps.

What the training loop (pretrain/train.py), fine-tuning and the tools (plan, benchmark) import to build exactly
what training runs; none of them imports the loop. The state is {'step', 'params', 'opt_state', 'rng'}; it is
initialised directly sharded (never on one device first) from the abstract state that jax.eval_shape gives.
"""
import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pretrain import optim
from pretrain.model import flops
from pretrain.model.heads import LanguageModel
from pretrain.runtime import sharding
from pretrain.settings import PretrainSettings
from pretrain.train_step import make_steps


def init_state(model: nnx.Module, optimizer: optax.GradientTransformation, seed: int) -> dict[str, Any]:
  """The train state of a freshly built model (call under jit with out_shardings to init sharded)."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': optimizer.init(params),
          'rng': jax.random.key_data(jax.random.key(seed))}


def train_state_shardings(abstract_state: dict, param_shardings: dict, optimizer, mesh) -> dict:
  """Optimizer moments are laid out like their parameters; scalars are replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state['opt_state'], param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, NamedSharding))
  return {'step': replicated, 'params': param_shardings, 'opt_state': opt_shardings, 'rng': replicated}


@dataclasses.dataclass
class ShardedState:
  """A model's train state laid out on a mesh: what both pretraining and fine-tuning compile against."""
  graphdef: nnx.GraphDef
  param_shardings: dict
  state_shardings: dict
  abstract_state: dict  # ShapeDtypeStructs carrying the shardings: the restore target
  init: Callable[[], dict]  # -> a fresh train state, initialised directly sharded


def shard_state(build_model: Callable[[], nnx.Module], optimizer: optax.GradientTransformation, seed: int,
                mesh, rules) -> ShardedState:
  """The state layout of build_model() on mesh; call inside sharding.use_mesh_and_rules(mesh, rules)."""
  graphdef, abstract_params = nnx.split(nnx.eval_shape(build_model))
  param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh, rules))
  abstract_state = jax.eval_shape(lambda: init_state(build_model(), optimizer, seed))
  state_shardings = train_state_shardings(abstract_state, param_shardings, optimizer, mesh)
  return ShardedState(
      graphdef=graphdef, param_shardings=param_shardings, state_shardings=state_shardings,
      abstract_state=jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_shardings),
      init=jax.jit(lambda: init_state(build_model(), optimizer, seed), out_shardings=state_shardings))


@dataclasses.dataclass
class Trainer:
  """Everything compiled for one (settings, mesh): the sharded state layout and the jitted steps."""
  graphdef: nnx.GraphDef
  objective: Any  # pretrain.objectives: what a batch holds, the loss terms, the metric names
  state_shardings: dict
  batch_sharding: NamedSharding
  abstract_state: dict  # ShapeDtypeStructs carrying the shardings: the restore target
  abstract_batch: dict  # one global batch's ShapeDtypeStructs: what the train step compiles for
  init: Callable[[], dict]  # -> a fresh train state, initialised directly sharded
  train_step: Callable[[dict, dict], tuple[dict, dict]]  # donates the state
  grads_step: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (mean-loss gradients, loss sums)
  eval_step: Callable[..., dict]


def make_trainer(settings: PretrainSettings, mesh, tokenizer=None) -> Trainer:
  """Call inside sharding.use_mesh_and_rules(mesh, settings.sharding_rules). tokenizer: its special ids drive MLM
  masking (None: the ids our SentencePiece models reserve; shapes and FLOPs do not change)."""
  rules = settings.sharding_rules
  optimizer = optim.make_optimizer(settings.train.optimizer)
  objective = settings.build_objective(tokenizer)
  layout = shard_state(lambda: LanguageModel(settings.model, nnx.Rngs(settings.seed)), optimizer, settings.seed,
                       mesh, rules)
  step_fns = make_steps(layout.graphdef, optimizer, objective, microbatches=settings.train.microbatches)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  shapes = objective.batch_shapes(settings.train.batch_size, settings.data.seq_len)
  return Trainer(
      graphdef=layout.graphdef, objective=objective, state_shardings=layout.state_shardings,
      batch_sharding=batch_sharding, abstract_state=layout.abstract_state,
      abstract_batch={k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=batch_sharding)
                      for k, shape in shapes.items()},
      init=layout.init,
      train_step=jax.jit(step_fns.train, in_shardings=(layout.state_shardings, batch_sharding),
                         out_shardings=(layout.state_shardings, None), donate_argnums=0),
      grads_step=jax.jit(step_fns.grads, in_shardings=(layout.state_shardings, batch_sharding),
                         out_shardings=(layout.param_shardings, None)),
      eval_step=jax.jit(step_fns.eval))


def flops_per_token(settings: PretrainSettings) -> float:
  """Model FLOPs of training per input token (pretrain/model/flops.py), with this run's objective."""
  predicted = settings.build_objective().predicted_per_sequence(settings.data.seq_len)
  return flops.train_flops_per_token(settings.model, settings.data.seq_len, predicted)


def flops_per_step(settings: PretrainSettings) -> float:
  return flops_per_token(settings) * settings.tokens_per_step
