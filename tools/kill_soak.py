"""Kills a real pretraining run at random moments, restarts it, and checks it ends as an uninterrupted run does.

  python -m tools.kill_soak --kills 50 [--seed S] [--workdir DIR] [--config FILE[:ARG]] [--config.a.b=v ...]

Runs `python -m pretrain` once uninterrupted (the reference), then on a second workdir starts it again and
again, each time sending SIGKILL at a random moment: during start-up and compilation, at a random train step,
while an asynchronous checkpoint is being written (a `*.orbax-checkpoint-tmp-*` directory exists), or just after
a checkpoint has committed. After the last kill the run is left to finish. Checked:
  - every restart resumed from the newest committed checkpoint on disk (nothing committed is lost);
  - the final checkpoint equals the reference's bit for bit: parameters, optimizer state, step, RNG and the
    input pipeline's position; and metrics.jsonl holds the same lines as the reference's, every field of every
    train and eval line bit for bit but the timings (a line lost to a kill, or written twice, is a failure).
Bit-for-bit equality holds on CPU with the same device count (the default here: the tiny model, below, with
4 steps per kill, at least 40, unless --config.train.steps is given).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.cli import ArgumentParser, print_error, tool_main
from pretrain.runtime.config_files import load_config, parse_with_overrides
from pretrain.runtime.errors import JobError, require
from pretrain.runtime.metrics_log import TIMING_FIELDS

# A model small enough that a restart takes seconds, with a checkpoint every other step (so most moments fall
# near a save) and keep=2 (so old steps are deleted while the run is killed).
DEFAULT_OVERRIDES = (
    '--config.model.num_layers=2', '--config.model.hidden_size=64', '--config.model.mlp_dim=128',
    '--config.model.vocab_size=512', '--config.model.max_position_embeddings=64', '--config.data.seq_len=32',
    '--config.train.batch_size=8', '--config.train.steps=40', '--config.train.warmup_steps=4',
    '--config.train.log_every=1', '--config.train.eval_every=20', '--config.train.eval_batches=2',
    '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=2')
MOMENTS = ('startup', 'step', 'save', 'commit')
RESUMED = re.compile(r'resumed from \S+ at step (\d+)')
COMPILED = 'compiled the train step'
ATTEMPT_TIMEOUT_S = 600


class SoakFailure(JobError):
  """The killed run did not end as the uninterrupted one did (or a run failed)."""


def check(condition: bool, message: str) -> None:
  if not condition:
    raise SoakFailure(message)


@dataclasses.dataclass
class Kill:
  moment: str  # startup | step | save | commit
  after_s: float  # seconds since the process started
  committed: int | None  # newest committed checkpoint step once the process was dead
  cut_save: bool  # a checkpoint write was cut short (its temporary directory was left behind)
  resumed: int | None = None  # the step the next start resumed from


@dataclasses.dataclass
class Report:
  kills: list[Kill]
  steps: int
  reference_s: float
  soak_s: float

  def summary(self) -> dict:
    by_moment = {m: sum(k.moment == m for k in self.kills) for m in MOMENTS}
    return {'kills': len(self.kills), 'by_moment': by_moment, 'cut_saves': sum(k.cut_save for k in self.kills),
            'steps': self.steps,
            'resumed_from': [k.resumed for k in self.kills], 'reference_s': round(self.reference_s, 1),
            'soak_s': round(self.soak_s, 1), 'identical': True}


def committed_steps(workdir: pathlib.Path) -> list[int]:
  directory = workdir / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit() and checkpoint_lib.committed(p))


def _save_in_flight(workdir: pathlib.Path) -> bool:
  directory = workdir / 'checkpoints'
  return directory.is_dir() and any('orbax-checkpoint-tmp' in p.name for p in directory.iterdir())


def _logged_steps(workdir: pathlib.Path) -> int:
  """The newest train step in metrics.jsonl (0 if none)."""
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return 0
  steps = [json.loads(line).get('step', 0) for line in path.read_text().splitlines()[-3:] if line.endswith('}')]
  return max(steps, default=0)


class PretrainProcess:
  """One `python -m pretrain` start, its output in WORKDIR/../NAME.log."""

  def __init__(self, command: list[str], workdir: pathlib.Path, name: str):
    workdir.parent.mkdir(parents=True, exist_ok=True)
    self.log_path = workdir.parent / f'{workdir.name}.{name}.log'
    self.log = self.log_path.open('w')
    self.started = time.monotonic()
    self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

  def elapsed(self) -> float:
    return time.monotonic() - self.started

  def running(self) -> bool:
    check(self.elapsed() < ATTEMPT_TIMEOUT_S, f'kill_soak: a run took over {ATTEMPT_TIMEOUT_S} s; see {self.log_path}')
    return self.process.poll() is None

  def kill(self) -> None:
    self.process.kill()
    self.process.wait()
    self.log.close()

  def finish(self) -> None:
    rc = self.process.wait(timeout=ATTEMPT_TIMEOUT_S)
    self.log.close()
    tail = [line for line in self.log_path.read_text().splitlines() if line.strip()][-1:]
    check(rc == 0, f'kill_soak: python -m pretrain exited {rc} ({tail[0] if tail else "no output"}); see '
          f'{self.log_path}')

  def resumed_step(self) -> int | None:
    match = RESUMED.search(self.log_path.read_text())
    return int(match.group(1)) if match else None


def pretrain_command(config: str, overrides: Sequence[str], workdir: pathlib.Path) -> list[str]:
  return [sys.executable, '-m', 'pretrain', '--config', config, '--workdir', str(workdir), *overrides]


def _wait_for_moment(proc: PretrainProcess, workdir: pathlib.Path, moment: str, rng: random.Random,
                     startup_s: float, target_step: int) -> bool:
  """Polls until the chosen moment (True) or until the process has exited (False).

  startup: a random time before the first step (at the latest, once compiled); step: inside the step after
  `target_step`; save: the first checkpoint write in flight from `target_step` on (or, if none is seen within
  4 more steps, that step); commit: as soon as a checkpoint newer than those on disk at `target_step` has
  committed. Steps count once this process has compiled (metrics.jsonl is truncated by then)."""
  delay, compiled, committed_before = rng.uniform(0, startup_s), False, None
  while proc.running():
    compiled = compiled or COMPILED in proc.log_path.read_text()
    if moment == 'startup' and (proc.elapsed() >= delay or compiled):
      return True
    logged = _logged_steps(workdir) if compiled and moment != 'startup' else 0
    if moment == 'step' and logged >= target_step:
      time.sleep(rng.uniform(0, 0.03))
      return True
    if moment == 'save' and logged >= target_step and (_save_in_flight(workdir) or logged >= target_step + 4):
      time.sleep(rng.uniform(0, 0.01))
      return True
    if moment == 'commit' and logged >= target_step:
      newest = (committed_steps(workdir) or [0])[-1]
      committed_before = newest if committed_before is None else committed_before
      if newest > committed_before or logged >= target_step + 8:
        return True
    time.sleep(0.002)
  return False


def soak(config: str, overrides: Sequence[str], workdir: pathlib.Path, kills: int, seed: int,
         startup_s: float, steps: int, checkpoint_every: int, say=print) -> list[Kill]:
  """Runs pretraining in `workdir`, killed `kills` times, then to the end; checks every resume."""
  rng = random.Random(seed)
  done: list[Kill] = []
  command = pretrain_command(config, overrides, workdir)
  while True:
    proc = PretrainProcess(command, workdir, f'run{len(done)}')
    if done:
      done[-1].resumed = _resumed_when_known(proc, workdir)
      check(done[-1].resumed == done[-1].committed,
              f'kill_soak: after kill {len(done)} the newest committed checkpoint was step {done[-1].committed}, '
              f'but the restart resumed from {done[-1].resumed}; see {proc.log_path}')
    if len(done) == kills:
      proc.finish()
      return done
    start = (done[-1].committed or 0) if done else 0
    # Up to a share of the remaining steps ahead (room for the kills to come), and at least past the next
    # checkpoint or two, so that the run makes progress between kills.
    share = (steps - start) // (kills - len(done) + 1)
    target = min(steps - 1, start + rng.randint(1, max(2 * checkpoint_every, share)))
    moment = rng.choice(MOMENTS)
    if not _wait_for_moment(proc, workdir, moment, rng, startup_s, target):
      proc.finish()  # it finished before the moment came
      raise SoakFailure(f'kill_soak: the run finished before kill {len(done) + 1}; use more --config.train.steps')
    after_s = proc.elapsed()
    proc.kill()
    done.append(Kill(moment, after_s, (committed_steps(workdir) or [None])[-1], _save_in_flight(workdir)))
    say(f'kill {len(done)}/{kills}: {moment} at {after_s:.1f} s; newest committed checkpoint: '
        f'{done[-1].committed}' + ('; a checkpoint write was cut short' if done[-1].cut_save else ''))


def _resumed_when_known(proc: PretrainProcess, workdir: pathlib.Path) -> int | None:
  """The step this start resumed from, read from its log once it has got that far (None: a fresh start)."""
  while proc.running():
    text = proc.log_path.read_text()
    if RESUMED.search(text) or COMPILED in text:
      break
    time.sleep(0.01)
  if proc.process.poll():
    proc.finish()  # raises, with the end of its log
  return proc.resumed_step()


def final_state(workdir: pathlib.Path, step: int) -> tuple[dict, dict]:
  """(train state as numpy arrays, data-pipeline state) of a checkpoint, read without a target."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  step_dir = workdir / 'checkpoints' / str(step)
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), checkpoint_lib.stored_state(step_dir))
  state = checkpointer.restore(step_dir / 'state', args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  data = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / 'data')
  return state, data


def compare(reference: pathlib.Path, killed: pathlib.Path, step: int) -> None:
  """Raises unless both workdirs' checkpoints at `step` and their metrics.jsonl (but the timings) are identical."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  (ref_state, ref_data), (state, data) = final_state(reference, step), final_state(killed, step)
  ref_leaves = jax.tree_util.tree_leaves_with_path(ref_state)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  check([p for p, _ in ref_leaves] == [p for p, _ in leaves], 'kill_soak: the two final states differ in structure')
  for (path, a), (_, b) in zip(ref_leaves, leaves):
    check(a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(),
            f'kill_soak: {jax.tree_util.keystr(path)} differs from the uninterrupted run at step {step} '
            f'(max abs difference {np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))})')
  check(ref_data == data, f'kill_soak: the data pipeline state differs: {ref_data} vs {data}')
  ref_lines, lines = _metrics_lines(reference), _metrics_lines(killed)
  differ = [n for n in range(max(len(ref_lines), len(lines)))
            if n >= len(ref_lines) or n >= len(lines) or ref_lines[n] != lines[n]]
  if differ:
    n = differ[0]
    check(False, f'kill_soak: metrics.jsonl differs from the uninterrupted run\'s at line {n + 1}: '
          f'{ref_lines[n] if n < len(ref_lines) else "(none)"} vs {lines[n] if n < len(lines) else "(none)"}')


def _metrics_lines(workdir: pathlib.Path) -> list[dict]:
  """metrics.jsonl's records in order, without the fields that time the machine."""
  records = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in records]


def reference_run(config: str, overrides: Sequence[str], workdir: pathlib.Path) -> float:
  """Runs pretraining uninterrupted in `workdir`; returns the seconds until its first step was logged."""
  proc = PretrainProcess(pretrain_command(config, overrides, workdir), workdir, 'run')
  startup_s = 0.0
  while proc.running() and not startup_s:
    startup_s = proc.elapsed() if _logged_steps(workdir) else 0.0
    time.sleep(0.01)
  proc.finish()
  return startup_s or proc.elapsed() / 2


def run_soak(config: str, overrides: Sequence[str], root: pathlib.Path, kills: int, seed: int, say=print) -> Report:
  """The reference run in ROOT/reference, the killed one in ROOT/killed; raises SoakFailure on any mismatch."""
  loaded = load_config(config, overrides)
  from pretrain.settings import PretrainSettings  # pylint: disable=g-import-not-at-top
  PretrainSettings.from_config(loaded)
  require(kills >= 0, f'--kills: must be >= 0, got {kills}')
  steps = loaded.train.steps
  reference, killed = root / 'reference', root / 'killed'
  for workdir in (reference, killed):
    require(not workdir.exists() or not any(workdir.iterdir()), f'--workdir: {workdir} is not empty')
  start = time.monotonic()
  startup_s = reference_run(config, overrides, reference)
  reference_s = time.monotonic() - start
  say(f'reference run: {steps} steps in {reference_s:.1f} s (first step logged after {startup_s:.1f} s)')
  start = time.monotonic()
  done = soak(config, overrides, killed, kills, seed, startup_s, steps, loaded.train.checkpoint_every, say)
  soak_s = time.monotonic() - start
  compare(reference, killed, steps)
  report = Report(done, steps, reference_s, soak_s)
  say(f'identical after {len(done)} kill{"" if len(done) == 1 else "s"}: parameters, optimizer state, step, RNG, '
      f'data position and every metrics line; {json.dumps(report.summary())}')
  return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.kill_soak', description=__doc__.splitlines()[0],
                          epilog='Any other --config.a.b=value overrides a config field (after the defaults: '
                          + ' '.join(DEFAULT_OVERRIDES) + ').')
  parser.add_argument('--config', default='configs/pretrain_mlm.py:size=tiny', help='config file[:arg]')
  parser.add_argument('--kills', type=int, default=20, help='SIGKILLs before the run may finish')
  parser.add_argument('--seed', type=int, default=0, help='seed of the kill moments')
  parser.add_argument('--workdir', default=None, help='where the two runs go (default: a new temporary dir)')
  return parse_with_overrides(parser, argv)


def run(args: argparse.Namespace) -> Report:
  root = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix='kill_soak.')).absolute()
  print(f'workdirs under {root}', flush=True)
  # Unless given, enough steps for the kills: about 4 per kill (at least the default 40).
  steps = [] if any(o.startswith('--config.train.steps=') for o in args.overrides) else [
      f'--config.train.steps={max(40, 4 * args.kills)}']
  return run_soak(args.config, [*DEFAULT_OVERRIDES, *steps, *args.overrides], root, args.kills, args.seed,
                  say=lambda line: print(line, flush=True))


def main(argv: Sequence[str] | None = None) -> int:
  try:
    return tool_main(parse_args, run, argv)
  except SoakFailure as e:
    print_error(str(e))
    return 1


if __name__ == '__main__':
  sys.exit(main())
