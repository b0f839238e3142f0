"""Device mesh from config, logical->mesh axis rules, and the shardings of parameters and batches."""
import contextlib
import math
from typing import Any, Sequence

import flax.core.spmd
import flax.linen as nn
import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pretrain.runtime.errors import require

MESH_AXES = ('data', 'fsdp', 'tensor')
# Logical axes that are replicated where their mesh axes do not divide them, instead of an error: grouped-query
# attention's key/value heads (8 kv heads on tensor 16 stay whole on each device; their projections are small).
REPLICATED_WHEN_INDIVISIBLE = ('kv_heads', 'act_kv_heads')
Rules = Sequence[tuple[str, Any]]


def resolve_mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """Mesh sizes for (data, fsdp, tensor); one of them may be -1 (all remaining devices)."""
  sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
  free = [axis for axis, size in zip(MESH_AXES, sizes) if size == -1]
  require(len(free) <= 1, f'mesh: only one of mesh.data/fsdp/tensor may be -1, got {dict(zip(MESH_AXES, sizes))}')
  for axis, size in zip(MESH_AXES, sizes):
    require(size == -1 or size >= 1, f'mesh.{axis}: must be -1 or >= 1, got {size}')
  fixed = math.prod(s for s in sizes if s != -1)
  if free:
    require(num_devices % fixed == 0,
            f'mesh.{free[0]}: cannot take the remaining devices: {num_devices} devices are not divisible by '
            f'the other mesh axes ({fixed})')
    sizes[MESH_AXES.index(free[0])] = num_devices // fixed
  require(math.prod(sizes) == num_devices,
          f'mesh: data*fsdp*tensor = {"*".join(map(str, sizes))} = {math.prod(sizes)} does not match the '
          f'{num_devices} available devices (set mesh.data/fsdp/tensor, or -1 for one of them)')
  return tuple(sizes)


def make_mesh(mesh_cfg, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  devices = list(devices if devices is not None else jax.devices())
  shape = resolve_mesh_shape(mesh_cfg, len(devices))
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
  return jax.make_mesh(shape, MESH_AXES, axis_types=auto, devices=devices)


def logical_to_spec(names: Sequence[str | None], rules: Rules) -> PartitionSpec:
  """PartitionSpec for logical axis names; every name must appear in the rules table."""
  table = dict(rules)
  for name in names:
    require(name is None or name in table, f'sharding_rules: no rule for logical axis {name!r}')
  return PartitionSpec(*(None if name is None else table[name] for name in names))


@contextlib.contextmanager
def use_mesh_and_rules(mesh: jax.sharding.Mesh, rules: Rules):
  """The context in which models are built and steps traced: the mesh plus the logical axis rules."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(tuple(rules)):
    yield


def fitted_spec(names: Sequence[str | None], shape: Sequence[int], mesh, rules: Rules) -> PartitionSpec:
  """logical_to_spec, with the REPLICATED_WHEN_INDIVISIBLE axes replicated where the mesh does not divide them."""
  spec = logical_to_spec(names, rules)
  return PartitionSpec(*(None if name in REPLICATED_WHEN_INDIVISIBLE and dim % _mesh_axis_size(mesh, entry) else entry
                         for name, dim, entry in zip(names, shape, spec)))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical names; a no-op outside a mesh/rules context."""
  rules = flax.core.spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, fitted_spec(names, x.shape, mesh, rules))


def logical_axis_size(name: str) -> int:
  """Devices the logical axis `name` spans in the current mesh/rules context (1 outside one)."""
  rules = flax.core.spmd.get_logical_axis_rules()
  mesh = jax.sharding.get_abstract_mesh()
  if not rules or mesh.empty:
    return 1
  return _mesh_axis_size(mesh, dict(rules).get(name))


def _mesh_axis_size(mesh, entry) -> int:
  if entry is None:
    return 1
  axes = entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh.shape[a] for a in axes)


def state_shardings(abstract_state: nnx.State, mesh: jax.sharding.Mesh, rules: Rules) -> nnx.State:
  """NamedSharding for every variable of an abstract nnx.State, from its logical names.

  Raises ConfigError naming the parameter when a mesh axis does not divide the dimension it shards.
  """
  with nn.logical_axis_rules(()):  # the logical names as annotated, not yet mapped by a rules context
    logical = nnx.get_partition_spec(abstract_state)

  def to_sharding(path, spec, value):
    names = tuple(spec) if spec is not None else ()
    mesh_spec = fitted_spec(names, value.shape, mesh, rules) if names else PartitionSpec()
    for dim, entry in zip(value.shape, mesh_spec):
      size = _mesh_axis_size(mesh, entry)
      name = jax.tree_util.keystr(path, simple=True, separator='/').removesuffix('/value')
      require(dim % size == 0,
              f'mesh: parameter {name} dimension {dim} is '
              f'not divisible by mesh axes {entry} of size {size}')
    return NamedSharding(mesh, mesh_spec)

  return jax.tree_util.tree_map_with_path(to_sharding, logical, abstract_state)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
  """Sharding of [batch, length] input arrays: the batch over the data-parallel axes."""
  return NamedSharding(mesh, logical_to_spec(('batch', 'length'), rules))


def data_parallel_size(mesh: jax.sharding.Mesh, rules: Rules) -> int:
  return _mesh_axis_size(mesh, dict(rules)['batch'])


def global_batch_from_local(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Builds global arrays from this process's rows (each process holds a contiguous slice of the batch)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def global_batch_from_host(batch: dict[str, np.ndarray], shardings: dict[str, NamedSharding]
                           ) -> dict[str, jax.Array]:
  """Builds global arrays when every process holds the whole batch (small fine-tuning sets)."""
  return {k: jax.make_array_from_callback(v.shape, shardings[k], lambda index, v=v: v[index])
          for k, v in batch.items()}
