"""Checks of a launch request before anything is printed or run; each error is one line naming the flag or field.

The config is loaded exactly as `python -m pretrain --config SPEC OVERRIDES` loads it, validated, and fitted to
the devices of the request: the mesh resolves, parameters split over it, and the batch splits over the
data-parallel devices, the microbatches and the processes.
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Sequence

from pretrain.model import presets
from pretrain.runtime import sharding
from pretrain.runtime.errors import ConfigError, require
from pretrain.settings import PretrainSettings, check_batch_split

ENV_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')
# Logical axis -> the model field that sizes it, for the parameter dimensions that the mesh must split evenly.
# Not 'kv_heads': grouped-query attention's key/value heads are replicated where the mesh does not divide them
# (pretrain.runtime.sharding.REPLICATED_WHEN_INDIVISIBLE), which the summary says.
PARAMETER_AXES = {'embed': 'hidden_size', 'heads': 'num_heads', 'mlp': 'mlp_dim', 'vocab': 'vocab_size'}


def parse_env(items: Sequence[str]) -> dict[str, str]:
  """KEY=VALUE strings -> dict, KEY a shell variable name."""
  env = {}
  for item in items:
    key, sep, value = item.partition('=')
    require(sep == '=' and ENV_NAME.fullmatch(key) is not None,
            f'--env: {item!r} is not KEY=VALUE with KEY a variable name ([A-Za-z_][A-Za-z0-9_]*)')
    env[key] = value
  return env


def check_workdir(workdir: str, hosts: int | None) -> None:
  """A job on several hosts (or an unknown number) needs a workdir every host sees: never a relative path."""
  require(bool(workdir.strip()), '--workdir: must not be empty')
  require('://' not in workdir, f'--workdir: {workdir} is a URL; python -m pretrain writes to a filesystem path: '
          'mount the bucket on every host (gcsfuse) or use shared storage (NFS, Filestore)')
  if os.path.isabs(workdir) or hosts == 1:
    return
  where = 'an unknown number of hosts' if hosts is None else f'{hosts} hosts'
  raise ConfigError(f'--workdir: {workdir!r} is a relative path, but the job runs on {where}; give a path every '
                    'host sees: an absolute path on shared storage (NFS, Filestore, a gcsfuse mount)')


@dataclasses.dataclass(frozen=True)
class Fit:
  """How a config's mesh and batch fit the devices of a request."""
  devices: int
  processes: int | None  # None: not known (then the per-process split is not checked)
  mesh: tuple[int, int, int]  # (data, fsdp, tensor)
  data_parallel: int
  batch_size: int
  microbatches: int
  seq_len: int
  kv_heads_replicated: bool = False  # the mesh does not divide model.num_kv_heads

  @property
  def rows_per_device(self) -> int:
    """Rows one data-parallel device runs per microbatch."""
    return self.batch_size // self.microbatches // self.data_parallel

  def summary(self, settings: PretrainSettings) -> str:
    shape = ' '.join(f'{axis}={size}' for axis, size in zip(sharding.MESH_AXES, self.mesh))
    procs = f', {self.processes} processes' if self.processes else ''
    model = settings.model
    return (f'{settings.objective} {presets.describe(model)} {model.num_layers}x{model.hidden_size}: '
            f'mesh {shape} on {self.devices} devices{procs}; batch {self.batch_size} = {self.data_parallel} '
            f'data-parallel x {self.microbatches} microbatch(es) x {self.rows_per_device} rows of {self.seq_len}: '
            f'{self.rows_per_device * self.seq_len} tokens per device at once'
            + (f'; the {model.num_kv_heads} kv heads are replicated (the mesh does not divide them)'
               if self.kv_heads_replicated else ''))


def _axes_size(mesh: dict[str, int], entry) -> int:
  axes = () if entry is None else entry if isinstance(entry, tuple) else (entry,)
  return math.prod(mesh[axis] for axis in axes)


def check_fit(config, devices: int, processes: int | None) -> tuple[PretrainSettings, Fit]:
  """The config's settings (checked), then the mesh, parameter and batch splits for `devices` devices in
  `processes` processes."""
  settings = PretrainSettings.from_config(config)
  shape = sharding.resolve_mesh_shape(settings.mesh, devices)
  mesh = dict(zip(sharding.MESH_AXES, shape))
  rules = dict(settings.sharding_rules)
  for logical, field in PARAMETER_AXES.items():
    size, split = getattr(settings.model, field), _axes_size(mesh, rules.get(logical))
    require(size % split == 0, f'model.{field}: {size} is not divisible by the mesh axes {rules[logical]} '
            f'({split} devices) that split the {logical!r} dimension of the parameters')
  data_parallel = _axes_size(mesh, rules['batch'])
  check_batch_split(settings, data_parallel, where=f' on {devices} devices')
  batch, micro = settings.train.batch_size, settings.train.microbatches
  require(processes is None or batch % processes == 0,
          f'train.batch_size: {batch} is not divisible by the process count {processes}')
  kv_replicated = settings.model.num_kv_heads % _axes_size(mesh, rules.get('kv_heads')) != 0
  return settings, Fit(devices, processes, shape, data_parallel, batch, micro, settings.data.seq_len, kv_replicated)
