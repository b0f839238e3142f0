"""Faults in a 2-process job. A process dies: the other stops within a bounded time (with one line naming it, from
the peer watchdog, unless the dead one is process 0), and a restart of both resumes from the newest committed
checkpoint and continues exactly. SIGTERM to one process (a preemption): both stop at the same step with one
checkpoint there and exit 0, and a rerun resumes there. A rerun in which one process cannot read that checkpoint
(an I/O error): both stop with the same line naming it, exit code 1, and nothing is moved."""
import json
import pathlib
import re
import shutil
import signal
import time

import pytest

from pretrain.runtime.peer_watchdog import KEY_PREFIX, PeerWatchdog, lost_message
from tests.restore_faults import inject_eio
from tests.test_multiprocess import _finish, _records, _start, _train

HEARTBEAT_S = 10
STEPS = 60
MESH = (4, 1, 1)
ARGS = [f'--config.train.steps={STEPS}', '--config.train.checkpoint_every=10', '--config.train.log_every=1',
        f'--config.train.eval_every={STEPS}', '--config.train.eval_batches=1', f'--heartbeat_timeout_s={HEARTBEAT_S}']
PREEMPT_STEPS = 30  # room for the preemption service to agree on a step well before the end
PREEMPT_ARGS = [f'--config.train.steps={PREEMPT_STEPS}', '--config.train.checkpoint_every=1000',
                '--config.train.log_every=1', '--config.train.eval_every=1000', '--config.train.eval_batches=1',
                f'--heartbeat_timeout_s={HEARTBEAT_S}']


def _default_heartbeat(args: list[str]) -> list[str]:
  """args for a rerun whose claim is the resume: the default heartbeat timeout. Twice on CI (2 busy cores), with the
  10 s one, a restarted job did not end: one process waited in JAX's shutdown barrier for the other until it
  aborted (a 'terminate called after throwing'; once the barrier's 300 s timeout)."""
  return [arg for arg in args if not arg.startswith('--heartbeat_timeout_s')]


def _committed_steps(workdir: pathlib.Path) -> list[int]:
  """The steps Orbax has committed: a save renames its temporary directory to the bare step number when done."""
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _logged_step(workdir: pathlib.Path) -> int:
  """The last train step in metrics.jsonl (0 before the first, or while a line is being written)."""
  try:
    return max(_records(workdir, 'loss'), default=0) if (workdir / 'metrics.jsonl').exists() else 0
  except json.JSONDecodeError:
    return 0


def _past_a_checkpoint(workdir: pathlib.Path, steps_past: int = 5) -> bool:
  """A checkpoint is committed, and training has logged steps_past more steps."""
  committed = _committed_steps(workdir)
  return bool(committed) and _logged_step(workdir) >= committed[-1] + steps_past


def _signal_one(tmp_path: pathlib.Path, victim: int, ready, wait_s: float, sig=signal.SIGKILL, args=ARGS):
  """Starts the 2-process job in tmp_path/run and sends `sig` to process `victim` once ready(tmp_path) holds.

  Waits for the other process to exit (both, for a SIGTERM); returns both processes, the seconds from the signal
  to the last exit waited for, and each one's stderr.
  """
  logs = [(tmp_path / f'stderr{i}.txt').open('w') for i in range(2)]
  procs = _start(tmp_path / 'run', 2, MESH, *args, stderr=logs)
  try:
    deadline = time.monotonic() + 300
    while not ready(tmp_path):
      assert all(proc.poll() is None for proc in procs), 'a process ended before the signal'
      assert time.monotonic() < deadline, 'not ready for the signal within 300 s'
      time.sleep(0.2)
    procs[victim].send_signal(sig)
    sent = time.monotonic()
    for i, proc in enumerate(procs):
      if i != victim or sig == signal.SIGTERM:
        proc.wait(timeout=wait_s)  # TimeoutExpired: an endless hang
    stopped_after = time.monotonic() - sent
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()
  return procs, stopped_after, [(tmp_path / f'stderr{i}.txt').read_text() for i in range(2)]


def test_a_killed_process_stops_the_other_and_a_restart_of_both_resumes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  procs, stopped_after, errs = _signal_one(tmp_path, 1, lambda path: _past_a_checkpoint(path / 'run'),
                                           wait_s=HEARTBEAT_S + 60)
  assert procs[0].returncode == 1, errs[0][-3000:]
  assert errs[0].strip().splitlines()[-1] == lost_message([1], 0, 2, HEARTBEAT_S), errs[0][-3000:]

  before = _records(workdir, 'loss')  # the killed run's steps, some past its newest checkpoint
  newest = _committed_steps(workdir)[-1]
  assert max(before) > newest
  outputs = _train(workdir, 2, MESH, *_default_heartbeat(ARGS))  # the same command again, both processes
  assert f'resumed from {workdir / "checkpoints" / str(newest)} at step {newest}' in outputs[0]
  after = _records(workdir, 'loss')
  assert sorted(after) == list(range(1, STEPS + 1))
  assert {step: after[step] for step in before} == before  # the steps done again: bit for bit
  print(f'process 0 stopped {stopped_after:.1f} s after process 1 was killed at step {max(before)}; '
        f'resumed at step {newest}')


def test_when_process_0_dies_jax_stops_the_other_at_once(tmp_path):
  """Process 0 holds the coordination service: the others lose it at once, and JAX's runtime aborts them (its
  fatal log, not the watchdog's line: nothing in Python runs first)."""
  procs, stopped_after, errs = _signal_one(
      tmp_path, 0, lambda path: 'jax.distributed: process 0 of 2' in (path / 'stderr0.txt').read_text(), wait_s=60)
  assert procs[1].returncode != 0
  assert 'the JAX distributed service detected fatal errors' in errs[1]
  print(f'process 1 stopped {stopped_after:.1f} s after process 0 was killed, exit code {procs[1].returncode}')


@pytest.fixture(scope='module')
def preempted(tmp_path_factory):
  """A 2-process job sent SIGTERM (process 1 only) once it has trained 2 steps: (workdir, processes, stderrs)."""
  tmp_path = tmp_path_factory.mktemp('preempted')
  procs, stopped_after, errs = _signal_one(tmp_path, 1, lambda path: _logged_step(path / 'run') >= 2, wait_s=300,
                                           sig=signal.SIGTERM, args=PREEMPT_ARGS)
  print(f'both processes exited {stopped_after:.1f} s after the SIGTERM')
  return tmp_path / 'run', procs, errs


def test_sigterm_to_one_process_stops_both_at_one_step_with_one_checkpoint_and_both_resume(preempted, tmp_path):
  workdir, procs, errs = preempted
  assert [proc.returncode for proc in procs] == [0, 0], [err[-3000:] for err in errs]  # both tails
  stops = [re.findall(r'preempted: stopped at step (\d+) with a checkpoint', err) for err in errs]
  assert len(stops[0]) == 1 and stops[0] == stops[1], [err[-2000:] for err in errs]  # the same step, in both
  step = int(stops[0][0])
  assert step < PREEMPT_STEPS  # stopped by the signal, not by the end of training
  assert _committed_steps(workdir) == [step]  # its one checkpoint, at that step
  assert _logged_step(workdir) == step  # no step trained past it

  workdir = shutil.copytree(workdir, tmp_path / 'run')
  outputs = _train(workdir, 2, MESH, *_default_heartbeat(PREEMPT_ARGS))  # the same command again, both processes
  assert f'resumed from {workdir / "checkpoints" / str(step)} at step {step}' in outputs[0]
  assert sorted(_records(workdir, 'loss')) == list(range(1, PREEMPT_STEPS + 1))  # each step logged once
  assert _committed_steps(workdir)[-1] == PREEMPT_STEPS


def test_when_one_process_cannot_read_the_checkpoint_both_stop_and_nothing_moves(preempted, tmp_path, monkeypatch):
  workdir = shutil.copytree(preempted[0], tmp_path / 'run')
  step = _committed_steps(workdir)[-1]
  inject_eio(monkeypatch, process=1)  # restoring a step fails with EIO in process 1 only
  procs = _start(workdir, 2, MESH, *PREEMPT_ARGS)
  errs = _finish(procs, timeout=300)
  assert [proc.returncode for proc in procs] == [1, 1], [err[-2000:] for err in errs]
  lines = [err.strip().splitlines()[-1] for err in errs]
  assert lines[0] == lines[1], lines  # one decision, one line
  assert lines[0].startswith(f'error: checkpoint: step {step} ({workdir / "checkpoints" / str(step)}) did not restore '
                             'on process 1 of 2: Input/output error ('), lines[0]
  assert _committed_steps(workdir) == [step] and not (workdir / 'corrupt_checkpoints').exists()


def _beats(**beats) -> dict[str, str]:
  return {f'{KEY_PREFIX}{kind}/{peer}': str(value) for kind_peer, value in beats.items()
          for kind, peer in [kind_peer.split('_')]}


def test_the_watchdog_condemns_a_silent_peer_not_a_finished_one_nor_one_it_could_not_watch():
  watchdog = PeerWatchdog(client=None, process_id=0, num_processes=4, timeout_s=10)
  start = time.monotonic()
  lost = {}
  for t in range(1, 16):  # process 1 beats on; 2 stops after 3 s; 3 stops after 2 s, done (in JAX's shutdown)
    state = _beats(beat_1=t, beat_2=min(t, 3), beat_3=min(t, 2), **({'done_3': 1} if t >= 2 else {}))
    lost[t] = watchdog.observe(start + t, state)
  assert {t: peers for t, peers in lost.items() if peers} == {14: [2], 15: [2]}

  watchdog = PeerWatchdog(client=None, process_id=1, num_processes=2, timeout_s=10)
  assert watchdog.observe(start + 1, _beats(beat_0=1)) == []
  assert watchdog.observe(start + 30, _beats(beat_0=1)) == []  # this process stalled: it saw nothing meanwhile
  silent = {t: watchdog.observe(start + t, None) for t in range(31, 43)}  # no answer from process 0's service
  assert {t: peers for t, peers in silent.items() if peers} == {41: [0], 42: [0]}
  assert lost_message([0], 1, 2, 10, '10.0.0.1:1234') == (
      'error: lost process 0 of 2 (the coordinator, 10.0.0.1:1234): no heartbeat for 10 s (it died, hangs or '
      'cannot be reached); process 1 stops too. Restart all 2 processes (same flags, same --workdir) to resume '
      'from the last checkpoint')
