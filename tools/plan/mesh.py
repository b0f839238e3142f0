"""The (data, fsdp, tensor) meshes a config can run on, each with its exact state layout and estimated memory,
and the one to suggest: the least communication that fits (pure data parallel, then fsdp, then tensor)."""
import dataclasses
import time

import jax

from pretrain.model.config import REMAT_POLICIES, ModelConfig
from pretrain.runtime import sharding
from pretrain.runtime.errors import ConfigError, require
from pretrain.settings import PretrainSettings, check_batch_split
from pretrain.trainer import Trainer, make_trainer
from tools.plan.memory import MemoryEstimate, estimate_memory, kv_heads_replicated

TENSOR_SIZES = (1, 2, 4, 8)


@dataclasses.dataclass
class MeshPlan:
  shape: dict[str, int]  # data, fsdp, tensor
  mesh: jax.sharding.Mesh
  rules: tuple
  trainer: Trainer
  batch_abstract: dict
  estimate: MemoryEstimate
  kv_heads_replicated: bool  # the mesh does not divide model.num_kv_heads: k/v projections whole on each device

  @property
  def flags(self) -> str:
    return ' '.join(f'--config.mesh.{axis}={size}' for axis, size in self.shape.items())

  @property
  def label(self) -> str:
    return ' '.join(f'{axis}={size}' for axis, size in self.shape.items())


def plan_mesh(settings: PretrainSettings, shape: dict[str, int], devices) -> MeshPlan:
  """The trainer built exactly as training builds it on this mesh (no tokenizer: MLM masks with the reserved
  special ids, which changes no shape), and its memory per device.

  Raises ConfigError naming the field when the batch or a parameter does not divide over the mesh.
  """
  mesh = sharding.make_mesh(shape, devices)
  rules = settings.sharding_rules
  check_batch_split(settings, sharding.data_parallel_size(mesh, rules))
  with sharding.use_mesh_and_rules(mesh, rules):
    trainer = make_trainer(settings, mesh)
  batch = trainer.abstract_batch
  estimate = estimate_memory(settings, trainer.abstract_state, batch, shape)
  return MeshPlan(dict(shape), mesh, rules, trainer, batch, estimate,
                  kv_heads_replicated(settings.model, shape, rules))


def candidate_shapes(num_devices: int, model_cfg: ModelConfig) -> list[dict[str, int]]:
  """Every (data, fsdp, tensor) with product num_devices, tensor in 1, 2, 4, 8 dividing the heads and the MLP;
  in order of communication: tensor first, then fsdp, smallest first."""
  shapes = []
  for tensor in TENSOR_SIZES:
    if num_devices % tensor or model_cfg.num_heads % tensor or model_cfg.mlp_dim % tensor:
      continue
    rest = num_devices // tensor
    for fsdp in (f for f in range(1, rest + 1) if rest % f == 0):
      shapes.append({'data': rest // fsdp, 'fsdp': fsdp, 'tensor': tensor})
  return shapes


def plan_candidates(settings: PretrainSettings, devices) -> tuple[list[MeshPlan], list[str]]:
  """The meshes this config can run on (in order of communication), and why each other candidate cannot."""
  plans, rejected = [], []
  model_cfg = settings.model
  shapes = candidate_shapes(len(devices), model_cfg)
  require(bool(shapes), f'model.num_heads: no tensor size in {TENSOR_SIZES} divides {len(devices)} devices, '
          f'model.num_heads {model_cfg.num_heads} and model.mlp_dim {model_cfg.mlp_dim}')
  for shape in shapes:
    try:
      plans.append(plan_mesh(settings, shape, devices))
    except ConfigError as e:
      rejected.append((shape, e))
  if not plans:
    first = str(rejected[0][1])
    if all(str(e).startswith('train.batch_size') for _, e in rejected):
      k = settings.train.microbatches
      sizes = sorted({s['data'] * s['fsdp'] for s, _ in rejected})
      first = (f'train.batch_size: {settings.train.batch_size} / train.microbatches {k} = '
               f'{settings.train.batch_size // k} rows per microbatch is not divisible by any data-parallel size '
               f'(mesh.data * mesh.fsdp) of {len(devices)} devices: {sizes}')
    raise ConfigError(first)
  shapes_by_reason = {}
  for shape, e in rejected:
    shapes_by_reason.setdefault(str(e), []).append('x'.join(str(v) for v in shape.values()))
  return plans, [f'data x fsdp x tensor = {", ".join(shapes)}: {reason}' for reason, shapes in shapes_by_reason.items()]


def suggest(plans: list[MeshPlan], usable_bytes: int) -> tuple[MeshPlan, bool]:
  """The first plan (least communication) whose estimate fits usable_bytes; else the smallest estimate."""
  for plan in plans:
    if plan.estimate.total <= usable_bytes:
      return plan, True
  return min(plans, key=lambda p: p.estimate.total), False


def memory_remedies(settings: PretrainSettings, plan: MeshPlan, usable_bytes: int) -> list[tuple[str, int]]:
  """Overrides that bring the plan's estimate under usable_bytes, with the estimate: another remat policy,
  or the fewest microbatches (gradient accumulation: fewer rows in flight) that are enough."""
  data_parallel = plan.shape['data'] * plan.shape['fsdp']

  def estimate(remat_policy: str, microbatches: int) -> int:
    changed = dataclasses.replace(settings, model=dataclasses.replace(settings.model, remat_policy=remat_policy),
                                  train=dataclasses.replace(settings.train, microbatches=microbatches))
    return estimate_memory(changed, plan.trainer.abstract_state, plan.batch_abstract, plan.shape).total

  microbatches, batch_size = settings.train.microbatches, settings.train.batch_size
  policy_now = settings.model.remat_policy
  remedies = [(f'--config.model.remat_policy={policy}', estimate(policy, microbatches))
              for policy in REMAT_POLICIES if policy != policy_now]
  k = 2 * microbatches
  while batch_size % k == 0 and (batch_size // k) % data_parallel == 0:
    total = estimate(policy_now, k)
    if total <= usable_bytes:
      remedies.append((f'--config.train.microbatches={k}', total))
      break
    k *= 2
  return [(flag, total) for flag, total in remedies if total <= usable_bytes]


def compile_step(plan: MeshPlan):
  """(the real train step compiled ahead of time for the plan's abstract inputs, seconds it took)."""
  start = time.perf_counter()
  with sharding.use_mesh_and_rules(plan.mesh, plan.rules):
    compiled = plan.trainer.train_step.lower(plan.trainer.abstract_state, plan.batch_abstract).compile()
  return compiled, time.perf_counter() - start


def compiled_memory(compiled) -> dict[str, int]:
  """The compiler's bytes per device: argument, output, alias, temp, and total = argument + output - alias + temp."""
  stats = compiled.memory_analysis()
  sizes = {k: int(getattr(stats, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'alias', 'temp')}
  sizes['total'] = sizes['argument'] + sizes['output'] - sizes['alias'] + sizes['temp']
  return sizes
