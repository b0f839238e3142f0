"""Two real processes on 127.0.0.1 (jax.distributed, CPU collectives) train exactly like one process, and
checkpoints move between 2-process and 1-process runs onto other meshes."""
import concurrent.futures
import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from pydoc_data import topics

ROOT = pathlib.Path(__file__).resolve().parents[1]
STEPS = 6
MODEL_ARGS = ['--config', f'{ROOT}/configs/pretrain_mlm.py:size=tiny', '--config.model.num_layers=2',
              '--config.model.hidden_size=64', '--config.model.num_heads=4', '--config.model.mlp_dim=128',
              '--config.model.vocab_size=400', '--config.data.seq_len=32', '--config.train.batch_size=8',
              f'--config.train.steps={STEPS}', '--config.train.warmup_steps=2', '--config.train.log_every=1',
              '--config.train.eval_every=3', '--config.train.eval_batches=2', '--config.train.checkpoint_every=3']


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _mesh_args(data, fsdp, tensor):
  return [f'--config.mesh.data={data}', f'--config.mesh.fsdp={fsdp}', f'--config.mesh.tensor={tensor}']


def _start(workdir, processes, mesh, *extra, slurm=False, stderr=None, cwds=None) -> list[subprocess.Popen]:
  """Starts `python -m pretrain` as `processes` processes of 4 / processes CPU devices each (4 devices in all).

  The processes find each other through the three cluster flags, or (slurm=True) through the environment
  variables srun sets, which jax.distributed auto-detects. stderr: one open file per process, else pipes.
  cwds: each process's working directory (default: the repository).
  """
  devices = 4 // processes
  python_path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))  # for cwds elsewhere
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=python_path,
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
                       '--xla_cpu_collective_call_terminate_timeout_seconds=600 '
                       '--xla_cpu_collective_timeout_seconds=600')
  port = _free_port()
  procs = []
  for i in range(processes):
    cluster = []
    if processes > 1 and slurm:
      env.update(SLURM_JOB_ID='4242', SLURM_STEP_NODELIST='127.0.0.1', SLURM_NTASKS=str(processes),
                 SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=str(port))
    elif processes > 1:
      cluster = ['--coordinator_address', f'127.0.0.1:{port}', '--num_processes', str(processes),
                 '--process_id', str(i)]
    procs.append(subprocess.Popen(
        [sys.executable, '-m', 'pretrain', *MODEL_ARGS, '--workdir', str(workdir), *_mesh_args(*mesh), *cluster,
         *extra], cwd=cwds[i] if cwds else ROOT, env=dict(env), stdout=subprocess.DEVNULL,
        stderr=stderr[i] if stderr else subprocess.PIPE, text=True))
  return procs


def _finish(procs, timeout: int = 600) -> list[str]:
  """Each process's stderr once all have exited (any still running after `timeout` is killed). The pipes are read
  side by side: a process whose pipe nobody drains would block in its next write once the pipe is full."""
  try:
    with concurrent.futures.ThreadPoolExecutor(len(procs)) as pool:
      return list(pool.map(lambda proc: proc.communicate(timeout=timeout)[1], procs))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()


def _train(workdir, processes, mesh, *extra, slurm=False):
  """_start, then each process's stderr once all have exited with code 0."""
  procs = _start(workdir, processes, mesh, *extra, slurm=slurm)
  outputs = _finish(procs)
  # Every process's tail: a process that stalls and is aborted by JAX's runtime shows where its threads were.
  tails = [f'--- process {i} (exit code {proc.returncode}):\n{err[-3000:]}' for i, (proc, err) in
           enumerate(zip(procs, outputs))]
  assert [proc.returncode for proc in procs] == [0] * processes, '\n'.join(tails)
  return outputs


def _records(workdir, key):
  lines = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return {r['step']: r[key] for r in lines if key in r}


@pytest.fixture(scope='module')
def one_process_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('one')
  _train(workdir, 1, (4, 1, 1))
  return workdir


def _assert_same_losses(workdir, reference):
  for key in ('loss', 'eval_loss'):
    got, want = _records(workdir, key), _records(reference, key)
    assert sorted(got) == sorted(want), key
    np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)], rtol=1e-5, err_msg=key)


def test_two_processes_train_like_one_and_hand_over_to_one_process_on_another_mesh(tmp_path, one_process_run):
  outputs = _train(tmp_path, 2, (4, 1, 1), f'--config.train.stop_at_step={STEPS // 2}')
  assert f'step {STEPS // 2}/{STEPS} | loss' in outputs[0]
  assert '| loss' not in outputs[1]  # progress lines come from process 0 only
  assert sorted(_records(tmp_path, 'loss')) == list(range(1, STEPS // 2 + 1))  # one line per step, not two
  # The 2-process checkpoint, resumed by one process with fsdp and tensor parallelism.
  outputs = _train(tmp_path, 1, (1, 2, 2))
  assert 'resumed from' in outputs[0]
  _assert_same_losses(tmp_path, one_process_run)


def test_one_process_checkpoint_resumes_in_two_slurm_processes_on_another_mesh(tmp_path, one_process_run):
  _train(tmp_path, 1, (4, 1, 1), f'--config.train.stop_at_step={STEPS // 2}')
  outputs = _train(tmp_path, 2, (2, 2, 1), slurm=True)  # started as srun would: auto-detected, no flags
  assert 'auto-detected SlurmCluster' in outputs[0] and 'process 0 of 2' in outputs[0]
  assert 'resumed from' in outputs[0]
  _assert_same_losses(tmp_path, one_process_run)


def test_processes_that_read_different_files_all_stop_with_one_line_naming_them(tmp_path):
  texts = [topics.topics[key] for key in sorted(topics.topics)[:6]]
  for process, count in ((0, 6), (1, 5)):  # process 1's copy lacks a file
    (tmp_path / f'host{process}' / 'corpus').mkdir(parents=True)
    for i, text in enumerate(texts[:count]):
      (tmp_path / f'host{process}' / 'corpus' / f'{i}.txt').write_text(text)
  procs = _start(tmp_path / 'run', 2, (4, 1, 1), '--config.data.source=text:corpus/*.txt',
                 cwds=[tmp_path / 'host0', tmp_path / 'host1'])
  deadline = time.monotonic() + 60  # both stop by themselves; the peer watchdog would take 100 s
  try:
    errors = [proc.communicate(timeout=max(1, deadline - time.monotonic()))[1] for proc in procs]
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
  lines = [err.strip().splitlines()[-1] for err in errors]
  assert [proc.returncode for proc in procs] == [2, 2], errors[0][-3000:]
  assert lines[0] == lines[1]
  assert lines[0].startswith("error: data.source: processes disagree on what 'text:corpus/*.txt' holds: process 0 "
                             'read 6 documents / ')
  assert ', process 1 read 5 documents / ' in lines[0] and lines[0].endswith('every process must see the same files')
  assert os.listdir(tmp_path / 'run') == []  # stopped before anything was written: no checkpoint, no config.json


def test_incomplete_cluster_flags_name_the_missing_flag(tmp_path):
  result = subprocess.run([sys.executable, '-m', 'pretrain', *MODEL_ARGS, '--workdir', str(tmp_path),
                           '--num_processes', '2', '--process_id', '0'], cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --coordinator_address: needed with --num_processes, --process_id (give all three, or none to '
      'auto-detect)')
