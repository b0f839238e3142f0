"""The gcloud commands that start `python -m pretrain` on every worker of a Cloud TPU VM slice.

The TPU must exist (`gcloud compute tpus tpu-vm create`). Steps, each on all workers at once (--worker=all):
make the remote directory, copy the repository (--copy_repo), ship the config file, install (--setup:
scripts/setup_env.sh then `jax[tpu]`), and run training. `python -m pretrain` calls jax.distributed.initialize(),
which finds the coordinator, process count and process id from the TPU metadata by itself.
"""
from __future__ import annotations

import dataclasses
import os
import pathlib
import re
import shlex

from pretrain.runtime.errors import require

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the repository
# What a worker needs to `pip install -e .` and train (scripts/ for setup_env.sh).
REPO_PARTS = ('pyproject.toml', 'README.md', 'pretrain', 'finetune', 'configs', 'tools', 'scripts')
VENV_PYTHON = '.venv/bin/python'  # the environment scripts/setup_env.sh makes in the repository

# Generation -> (the type's number per JAX device, devices per host in a multi-host slice, most devices on one
# host, what the number is a multiple of). The number counts TensorCores on v2-v5p (a v4/v5p chip is one megacore
# device: v4-32 = 16 chips; a v2/v3 core is one device) and chips on v5e/v6e (v5litepod-256 = 256 chips;
# v5litepod-8 is one host with 8).
TPU_GENERATIONS = {
    'v2': (1, 8, 8, 8), 'v3': (1, 8, 8, 8), 'v4': (2, 4, 4, 8), 'v5p': (2, 4, 4, 8),
    'v5litepod': (1, 4, 8, 1), 'v5e': (1, 4, 8, 1), 'v6e': (1, 4, 8, 1),
}


@dataclasses.dataclass(frozen=True)
class Step:
  description: str
  argv: list[str]


def tpu_shape(accelerator_type: str | None, devices: int | None) -> tuple[int, int | None]:
  """(JAX devices, hosts) from --accelerator_type (e.g. v5p-128: 64 devices, 16 hosts) or --devices (hosts unknown)."""
  if devices is not None:
    require(devices >= 1, f'--devices: must be >= 1, got {devices}')
    return devices, None
  match = re.fullmatch(r'([a-z0-9]+)-(\d+)', accelerator_type or '')
  require(match is not None and match.group(1) in TPU_GENERATIONS,
          f'--accelerator_type: {accelerator_type!r} is not GENERATION-SIZE with GENERATION one of '
          f'{", ".join(TPU_GENERATIONS)} (e.g. v4-32, v5p-128, v5litepod-256); or give --devices N')
  per_device, per_host, single_host, multiple = TPU_GENERATIONS[match.group(1)]
  number = int(match.group(2))
  require(number >= multiple and number % multiple == 0,
          f'--accelerator_type: {accelerator_type}: the size must be a multiple of {multiple}')
  count = number // per_device
  if count <= single_host:
    return count, 1
  require(count % per_host == 0, f'--accelerator_type: {accelerator_type}: {count} devices do not fill hosts of '
          f'{per_host}')
  return count, count // per_host


def remote_path(path: str) -> str:
  """A worker path as scp and ssh both read it: '~/x' -> 'x' (relative to the home directory)."""
  path = path.strip()
  require(path not in ('', '~', '~/') and '\n' not in path, f'--repo_dir: {path!r} is not a directory path')
  return path[2:] if path.startswith('~/') else path


def remote_config(config_path: str) -> str:
  """Where the config file goes on the workers, relative to the repository: where it is in this checkout, else
  launch_configs/NAME."""
  local = pathlib.Path(config_path).resolve()
  try:
    return local.relative_to(ROOT).as_posix()
  except ValueError:
    return f'launch_configs/{local.name}'


def training_command(repo_dir: str, env: dict[str, str], pretrain_args: list[str], python: str) -> str:
  """One shell line: cd to the repository, export the environment, exec `python -m pretrain ARGS`."""
  parts = [f'cd {shlex.quote(repo_dir)}']
  if env:
    parts.append('export ' + ' '.join(f'{key}={shlex.quote(value)}' for key, value in env.items()))
  parts.append(f'exec {shlex.join([python, "-m", "pretrain", *pretrain_args])}')
  return ' && '.join(parts)


def gcloud_steps(args, env: dict[str, str], overrides: list[str]) -> list[Step]:
  """The commands of a launch, in order."""
  for flag in ('tpu', 'zone', 'project'):
    value = getattr(args, flag)
    require(value is None or re.fullmatch(r'[\w.:-]+', value) is not None,
            f'--{flag}: {value!r} is not a name (letters, digits, - _ . :)')
  repo_dir = remote_path(args.repo_dir)
  config_path, _, config_arg = args.config.partition(':')
  remote_cfg = f'{repo_dir.rstrip("/")}/{remote_config(config_path)}'
  where = [f'--zone={args.zone}', '--worker=all'] + ([f'--project={args.project}'] if args.project else [])

  def ssh(command: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', args.tpu, *where, '--command', command]

  def scp(sources: list[str], target: str) -> list[str]:
    return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse', *sources, f'{args.tpu}:{target}', *where]

  steps = [Step('make the remote directories',
                ssh(f'mkdir -p {shlex.quote(repo_dir)} {shlex.quote(os.path.dirname(remote_cfg))}'))]
  if args.copy_repo:
    steps.append(Step(f'copy the repository to {repo_dir}', scp([str(ROOT / p) for p in REPO_PARTS], repo_dir)))
  steps.append(Step('ship the config file', scp([str(pathlib.Path(config_path).resolve())], remote_cfg)))
  if args.setup:
    setup = (f'cd {shlex.quote(repo_dir)} && PYTHON={shlex.quote(args.setup_python)} bash scripts/setup_env.sh'
             f' && {VENV_PYTHON} -m pip install -q {shlex.quote("jax[tpu]")}')
    steps.append(Step('install the project and jax[tpu] into .venv', ssh(setup)))
  spec = remote_config(config_path) + (f':{config_arg}' if config_arg else '')
  pretrain_args = ['--config', spec, '--workdir', args.workdir, *overrides]
  steps.append(Step('train on all workers', ssh(training_command(repo_dir, env, pretrain_args, VENV_PYTHON))))
  return steps


def workdir_warning(workdir: str, hosts: int | None) -> str | None:
  """A warning for a local absolute workdir on a slice of several hosts (their disks are not shared)."""
  if hosts == 1:
    return None
  return (f'warning: --workdir {workdir} is a local path on each worker; unless every worker mounts it from '
          'shared storage (Filestore, NFS, a bucket mounted with gcsfuse at the same path), its checkpoints are '
          'split across hosts')


def require_programs(steps: list[Step], which) -> None:
  """Each program the steps run is on PATH (checked before the first step runs)."""
  for program in sorted({step.argv[0] for step in steps}):
    require(which(program) is not None, f'{program}: not found on PATH; install the Google Cloud SDK, or use '
            '--dry-run to print the commands')
