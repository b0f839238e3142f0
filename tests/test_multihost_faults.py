"""A process of a 2-process job dies: the other stops within a bounded time (with one line naming it, from the
peer watchdog, unless the dead one is process 0), and a restart of both resumes from the newest committed
checkpoint and continues exactly."""
import json
import pathlib
import time

from pretrain.runtime.peer_watchdog import KEY_PREFIX, PeerWatchdog, lost_message
from tests.test_multiprocess import _records, _start, _train

HEARTBEAT_S = 10
STEPS = 60
MESH = (4, 1, 1)
ARGS = [f'--config.train.steps={STEPS}', '--config.train.checkpoint_every=10', '--config.train.log_every=1',
        f'--config.train.eval_every={STEPS}', '--config.train.eval_batches=1', f'--heartbeat_timeout_s={HEARTBEAT_S}']


def _committed_steps(workdir: pathlib.Path) -> list[int]:
  """The steps Orbax has committed: a save renames its temporary directory to the bare step number when done."""
  directory = workdir / 'checkpoints'
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.is_dir() else []


def _past_a_checkpoint(workdir: pathlib.Path, steps_past: int = 5) -> bool:
  """A checkpoint is committed, and training has logged steps_past more steps."""
  committed = _committed_steps(workdir)
  try:
    logged = max(_records(workdir, 'loss'), default=0) if (workdir / 'metrics.jsonl').exists() else 0
  except json.JSONDecodeError:  # a line being written
    return False
  return bool(committed) and logged >= committed[-1] + steps_past


def _kill_one(tmp_path: pathlib.Path, victim: int, ready, wait_s: float):
  """Starts the 2-process job in tmp_path/run and kills process `victim` once ready(tmp_path) holds.

  Returns the other process (exited), the seconds from the kill to its exit, and its stderr.
  """
  logs = [(tmp_path / f'stderr{i}.txt').open('w') for i in range(2)]
  procs = _start(tmp_path / 'run', 2, MESH, *ARGS, stderr=logs)
  survivor = procs[1 - victim]
  try:
    deadline = time.monotonic() + 300
    while not ready(tmp_path):
      assert all(proc.poll() is None for proc in procs), 'a process ended before the kill'
      assert time.monotonic() < deadline, 'not ready for the kill within 300 s'
      time.sleep(0.2)
    procs[victim].kill()
    killed = time.monotonic()
    survivor.wait(timeout=wait_s)  # TimeoutExpired: an endless hang
    stopped_after = time.monotonic() - killed
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()
  return survivor, stopped_after, (tmp_path / f'stderr{1 - victim}.txt').read_text()


def test_a_killed_process_stops_the_other_and_a_restart_of_both_resumes_exactly(tmp_path):
  workdir = tmp_path / 'run'
  survivor, stopped_after, err = _kill_one(tmp_path, 1, lambda path: _past_a_checkpoint(path / 'run'),
                                           wait_s=HEARTBEAT_S + 60)
  assert survivor.returncode == 1, err[-3000:]
  assert err.strip().splitlines()[-1] == lost_message([1], 0, 2, HEARTBEAT_S), err[-3000:]

  before = _records(workdir, 'loss')  # the killed run's steps, some past its newest checkpoint
  newest = _committed_steps(workdir)[-1]
  assert max(before) > newest
  outputs = _train(workdir, 2, MESH, *ARGS)  # the same command again, both processes
  assert f'resumed from {workdir / "checkpoints" / str(newest)} at step {newest}' in outputs[0]
  after = _records(workdir, 'loss')
  assert sorted(after) == list(range(1, STEPS + 1))
  assert {step: after[step] for step in before} == before  # the steps done again: bit for bit
  print(f'process 0 stopped {stopped_after:.1f} s after process 1 was killed at step {max(before)}; '
        f'resumed at step {newest}')


def test_when_process_0_dies_jax_stops_the_other_at_once(tmp_path):
  """Process 0 holds the coordination service: the others lose it at once, and JAX's runtime aborts them (its
  fatal log, not the watchdog's line: nothing in Python runs first)."""
  survivor, stopped_after, err = _kill_one(
      tmp_path, 0, lambda path: 'jax.distributed: process 0 of 2' in (path / 'stderr0.txt').read_text(), wait_s=60)
  assert survivor.returncode != 0
  assert 'the JAX distributed service detected fatal errors' in err
  print(f'process 1 stopped {stopped_after:.1f} s after process 0 was killed, exit code {survivor.returncode}')


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
