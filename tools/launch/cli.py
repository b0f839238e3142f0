"""Launches `python -m pretrain` on a Cloud TPU VM slice (gcloud) or a SLURM GPU cluster (sbatch).

  python -m tools.launch tpu --config configs/bert_large_wiki.py:data=/shared/data/wiki-128 \\
      --workdir /shared/runs/bert-large --tpu NAME --zone us-central2-b --accelerator_type v4-32 \\
      [--project P] [--env KEY=VALUE ...] [--repo_dir ~/flax-pretrain] [--copy_repo] [--setup] [--dry-run] \\
      [-- --config.train.steps=1000 ...]
  python -m tools.launch slurm --config configs/gpt2_large_wiki.py:data=/shared/wiki-1024 \\
      --workdir /shared/runs/gpt2-large --nodes 2 --gpus_per_node 8 [--partition P] [--time HH:MM:SS] \\
      [--account A] [--env KEY=VALUE ...] [--out job.sbatch] [--dry-run] [-- overrides]

Before anything is printed or run, the config is loaded with the overrides, validated, and fitted to the
devices of the request (TPU: from --accelerator_type, or --devices; SLURM: nodes x GPUs): the mesh resolves
and train.batch_size splits over the data-parallel devices and microbatches. Bad input: one line, exit 2.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence

from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import require
from pretrain.runtime.files import write_atomic
from tools.launch import slurm as launch_slurm
from tools.launch import tpu as launch_tpu
from pretrain.runtime.config_files import config_file, load_config
from tools.launch.check import check_fit, check_workdir, parse_env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  argv = list(sys.argv[1:] if argv is None else argv)
  head, overrides = (argv[:argv.index('--')], argv[argv.index('--') + 1:]) if '--' in argv else (argv, [])
  common = ArgumentParser(add_help=False)
  common.add_argument('--config', required=True, help='FILE[:ARG], as `python -m pretrain --config` takes it')
  common.add_argument('--workdir', required=True, help='the run directory every process shares (a path on '
                      'shared storage: NFS, Filestore, a gcsfuse mount)')
  common.add_argument('--env', action='append', default=[], metavar='KEY=VALUE',
                      help='environment variable for the training processes (repeatable)')
  common.add_argument('--dry-run', '--dry_run', dest='dry_run', action='store_true',
                      help='print the commands (tpu) or the batch script (slurm); run nothing')
  overrides_help = 'Arguments after -- are --config.FIELD=VALUE overrides, passed on to python -m pretrain.'
  parser = ArgumentParser(prog='python -m tools.launch', description=__doc__.splitlines()[0],
                                   epilog=overrides_help)
  targets = parser.add_subparsers(dest='target', required=True)

  tpu = targets.add_parser('tpu', parents=[common], help='a Cloud TPU VM slice, through gcloud', epilog=overrides_help)
  tpu.add_argument('--tpu', required=True, help='name of the TPU VM (made with gcloud compute tpus tpu-vm create)')
  tpu.add_argument('--zone', required=True)
  tpu.add_argument('--project', help='gcloud project (default: gcloud config)')
  shape = tpu.add_mutually_exclusive_group(required=True)
  shape.add_argument('--accelerator_type', help='the slice, e.g. v4-32 (16 chips), v5p-128 (64 chips), '
                     'v5litepod-256 (256 chips): sets the device and host count')
  shape.add_argument('--devices', type=int, help='JAX device count, when the type is not in the table')
  tpu.add_argument('--repo_dir', default='~/flax-pretrain', help='the repository on the workers (default: %(default)s)')
  tpu.add_argument('--copy_repo', action='store_true', help='copy this checkout to --repo_dir first')
  tpu.add_argument('--setup', action='store_true', help="install into REPO/.venv: scripts/setup_env.sh, then "
                   "pip install 'jax[tpu]' (needed once per TPU VM)")
  tpu.add_argument('--setup_python', default='python3', help='Python >= 3.11 on the workers that --setup makes '
                   'the venv with (default: %(default)s)')

  slurm = targets.add_parser('slurm', parents=[common], help='a SLURM GPU cluster: writes a batch script, sbatch',
                             epilog=overrides_help)
  slurm.add_argument('--nodes', type=int, required=True)
  slurm.add_argument('--gpus_per_node', type=int, required=True)
  slurm.add_argument('--partition')
  slurm.add_argument('--time', help='wall-clock limit, HH:MM:SS or D-HH:MM:SS')
  slurm.add_argument('--account')
  slurm.add_argument('--job_name', help='default: the config file name')
  slurm.add_argument('--log', default='%x-%j.out', help='the job log, SLURM patterns allowed (default: %(default)s)')
  slurm.add_argument('--sbatch', action='append', default=[], metavar='OPTION',
                     help='another #SBATCH option, e.g. --sbatch=--exclusive (repeatable)')
  slurm.add_argument('--python', default='python', help='the Python on the nodes that has this project and '
                     "jax[cuda12] (default: %(default)s from the job's PATH, which sbatch takes from your shell)")
  slurm.add_argument('--repo_dir', default=str(launch_tpu.ROOT), help='the repository on the shared filesystem '
                     '(default: this checkout)')
  slurm.add_argument('--out', help='the batch script to write (default: JOB_NAME.sbatch)')
  args = parser.parse_args(head)
  args.overrides, args.argv = overrides, argv
  return args


def run_tpu(args, config, env: dict[str, str]) -> None:
  devices, hosts = launch_tpu.tpu_shape(args.accelerator_type, args.devices)
  check_workdir(args.workdir, hosts)
  settings, fit = check_fit(config, devices, processes=hosts)  # one process per host
  steps = launch_tpu.gcloud_steps(args, env, args.overrides)
  warning = launch_tpu.workdir_warning(args.workdir, hosts)
  if warning:
    print(warning, file=sys.stderr)
  if args.dry_run:
    print(f'# {fit.summary(settings)}')
    for number, step in enumerate(steps, 1):
      print(f'# {number}. {step.description}\n{shlex.join(step.argv)}')
    return
  launch_tpu.require_programs(steps, shutil.which)
  for number, step in enumerate(steps, 1):
    print(f'[{number}/{len(steps)}] {step.description}: {shlex.join(step.argv)}', file=sys.stderr, flush=True)
    status = subprocess.run(step.argv, check=False).returncode
    if status:
      sys.exit(f'error: step {number}/{len(steps)} ({step.description}) failed with exit status {status}; '
               'the later steps were not run')


def run_slurm(args, config, env: dict[str, str]) -> None:
  job_name = args.job_name or pathlib.Path(config_file(args.config)).stem
  options = launch_slurm.sbatch_options(args, job_name)
  devices = args.nodes * args.gpus_per_node
  check_workdir(args.workdir, args.nodes)
  settings, fit = check_fit(config, devices, processes=devices)  # one process per GPU (see launch_slurm.PROCESS_LAYOUT)
  path, _, arg = args.config.partition(':')
  spec = os.path.abspath(path) + (f':{arg}' if arg else '')
  workdir = args.workdir if '://' in args.workdir else os.path.abspath(args.workdir)  # the script cds to the repo
  header = [f'Written by: python -m tools.launch {shlex.join(args.argv)}', fit.summary(settings)]
  script = launch_slurm.batch_script(args, options, env, spec, workdir, args.overrides, header)
  if args.dry_run:
    print(script, end='')
    return
  out = args.out or f'{job_name}.sbatch'
  write_atomic(out, script)
  print(f'wrote {out}', file=sys.stderr)
  require(shutil.which('sbatch') is not None,
          f'sbatch: not found on PATH; {out} is written: submit it with `sbatch {out}` where SLURM is installed')
  status = subprocess.run(['sbatch', out], check=False).returncode
  if status:
    sys.exit(f'error: sbatch {out} failed with exit status {status}')


def run(args: argparse.Namespace) -> None:
  env = parse_env(args.env)
  config = load_config(args.config, args.overrides)
  (run_tpu if args.target == 'tpu' else run_slurm)(args, config, env)


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)

