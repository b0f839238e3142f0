"""Counting train steps skipped for a non-finite loss, gradient or update (see train_step.py).

A skipped step leaves the parameters and optimizer state as they were, so a checkpoint written after it holds the
last finite state (and the step counter and data position past the bad batch: a resume continues as the
uninterrupted run does). The steps skipped by every run of a workdir are kept in WORKDIR/nonfinite_steps.json
(a resume truncates metrics.jsonl, not this), so a rerun that meets one of them again says so.
"""
import json
import pathlib

import jax
import jax.numpy as jnp
from absl import logging

from pretrain.runtime.errors import JobError
from pretrain.runtime.files import write_atomic

RECORD_FILE = 'nonfinite_steps.json'


class TrainingDiverged(JobError):
  """Too many consecutive non-finite steps: the job stops, its last good checkpoint intact."""


class NonfiniteSteps:
  """Reads each step's `nonfinite` flag; raises TrainingDiverged after `limit` in a row.

  stopped: what the stop leaves and what to do, after `...had a non-finite loss or gradients; `; workdir: where
  nonfinite_steps.json lives (None: no record); start_step: the step this run starts from; write_record: whether
  this process writes the record (process 0)."""

  def __init__(self, limit: int, stopped: str, workdir: str | None = None, start_step: int = 0,
               write_record: bool = True):
    self.limit, self.stopped = limit, stopped
    self.in_a_row = 0
    self.total = 0  # in this run of the job
    self.skipped: list[int] = []  # this run's skipped steps
    self.record_path = pathlib.Path(workdir) / RECORD_FILE if workdir else None
    self.write_record = write_record
    self.earlier = read_record(self.record_path) if self.record_path else []
    ahead = [s for s in self.earlier if s > start_step]
    if ahead:
      logging.warning('an earlier run of this workdir skipped step%s %s as non-finite; resuming from step %d, this '
                      'run meets %s again (the same state and data give the same result unless the settings '
                      'changed)', 's' if len(ahead) > 1 else '', _steps_text(ahead), start_step,
                      'them' if len(ahead) > 1 else 'it')

  def record(self, step: int, flag: jax.Array) -> None:
    """flag: the step's metrics['nonfinite'] (fetching it waits for that step)."""
    if float(jax.device_get(flag)) == 0.0:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    self.skipped.append(step)
    logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row, %d in this run)%s', step,
                    self.in_a_row, self.total, '; an earlier run skipped it too' if step in self.earlier else '')
    if self.record_path and self.write_record:
      steps = sorted(set(self.earlier) | set(self.skipped))
      write_atomic(self.record_path, json.dumps({'steps': steps}) + '\n')
    if self.in_a_row >= self.limit:
      raise TrainingDiverged(f'train.max_nonfinite_steps: {self.in_a_row} consecutive steps up to step {step} had a '
                             f'non-finite loss or gradients; {self.stopped}')

  def summary(self) -> str | None:
    """One line on this run's skipped steps for the end of a run (None when there were none)."""
    if not self.skipped:
      return None
    return (f'{self.total} step{"s" if self.total > 1 else ""} of this run had a non-finite loss or gradients and '
            f'changed nothing: {_steps_text(self.skipped)} (listed in {self.record_path or RECORD_FILE})')


def read_record(path: pathlib.Path) -> list[int]:
  """The steps in a workdir's nonfinite_steps.json (none if it is missing or unreadable)."""
  try:
    return [int(s) for s in json.loads(path.read_text())['steps']]
  except (OSError, ValueError, KeyError, TypeError):
    return []


def _steps_text(steps: list[int], limit: int = 10) -> str:
  shown = ', '.join(str(s) for s in steps[:limit])
  return shown + (f' and {len(steps) - limit} more' if len(steps) > limit else '')


def finite_update(params, updates, opt_state, old_opt_state, *checked) -> tuple:
  """In a jitted step: (params + updates, opt_state, nonfinite 0.0) when the updates and every array in `checked`
  (the loss, the gradient norm, ...) are finite, else (params, old_opt_state, nonfinite 1.0): the step changes
  nothing. `nonfinite` is the step's metrics['nonfinite'] that NonfiniteSteps reads."""
  finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves((checked, updates))]))
  params = jax.tree.map(lambda p, u: jnp.where(finite, p + u.astype(p.dtype), p), params, updates)
  opt_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), opt_state, old_opt_state)
  return params, opt_state, 1.0 - finite.astype(jnp.float32)
