"""The SLURM batch script whose `srun` starts `python -m pretrain` as one process per GPU on every node."""
from __future__ import annotations

import os
import re
import shlex

from pretrain.runtime.errors import require

# Why one process per GPU, from jax/_src/clusters/slurm_cluster.py and cluster.py; written into the script.
PROCESS_LAYOUT = """\
One process per GPU. Inside srun, jax.distributed.initialize() (called by `python -m pretrain`) takes the
process id and count from SLURM_PROCID and SLURM_NTASKS, the first node of SLURM_STEP_NODELIST as the
coordinator (port 61440 + SLURM_JOB_ID % 4096, or $JAX_COORDINATOR_PORT), and gives each process only the GPU
numbered SLURM_LOCALID (local_device_ids=[SLURM_LOCALID]). One task per node would therefore use GPU 0 alone;
and every task must see all GPUs of its node for that number to be right: --gpus-per-node, not
--gpus-per-task, and `srun --gpu-bind=none`."""
TIME = re.compile(r'(\d+-)?\d+:\d\d:\d\d')


def _require_token(flag: str, value: str | None) -> None:
  require(value is None or re.fullmatch(r'\S+', value) is not None,
          f'{flag}: {value!r} must be one word (it goes on an #SBATCH line)')


def sbatch_options(args, job_name: str) -> list[str]:
  """The #SBATCH options: nodes, a task and a GPU per GPU, the log, and the optional ones given."""
  require(args.nodes >= 1, f'--nodes: must be >= 1, got {args.nodes}')
  require(args.gpus_per_node >= 1, f'--gpus_per_node: must be >= 1, got {args.gpus_per_node}')
  require(args.time is None or TIME.fullmatch(args.time) is not None,
          f'--time: {args.time!r} is not HH:MM:SS or D-HH:MM:SS')
  for flag in ('job_name', 'partition', 'account', 'log', 'time'):
    _require_token(f'--{flag}', getattr(args, flag, None))
  for extra in args.sbatch:
    require(extra.startswith('-'), f'--sbatch: {extra!r} is not an sbatch option such as --exclusive')
    _require_token('--sbatch', extra)
  options = [f'--job-name={job_name}', f'--nodes={args.nodes}', f'--ntasks-per-node={args.gpus_per_node}',
             f'--gpus-per-node={args.gpus_per_node}', f'--output={args.log}']
  options += [f'--{name}={getattr(args, name)}' for name in ('partition', 'time', 'account') if getattr(args, name)]
  return options + list(args.sbatch)


def batch_script(args, options: list[str], env: dict[str, str], config_spec: str, workdir: str,
                 overrides: list[str], header: list[str]) -> str:
  """The whole script; `header` lines become comments at its top."""
  repo_dir = os.path.abspath(os.path.expanduser(args.repo_dir))
  lines = ['#!/bin/bash', *(f'# {" ".join(line.splitlines())}' for line in header)]  # one line each
  lines += [f'#SBATCH {option}' for option in options]
  lines += ['', *(f'# {line}' for line in PROCESS_LAYOUT.splitlines())]
  lines += ['set -euo pipefail', f'cd {shlex.quote(repo_dir)}']
  lines += [f'export {key}={shlex.quote(value)}' for key, value in env.items()]
  groups = [['srun', '--gpu-bind=none', '--kill-on-bad-exit=1'], [args.python, '-m', 'pretrain'],
            ['--config', config_spec], ['--workdir', workdir], *([item] for item in overrides)]
  lines.append(' \\\n    '.join(shlex.join(group) for group in groups))
  return '\n'.join(lines) + '\n'
