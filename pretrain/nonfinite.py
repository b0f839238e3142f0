"""Counting train steps skipped for a non-finite loss, gradient or update (see train_step.py)."""
import jax
from absl import logging

from pretrain.runtime.errors import JobError


class TrainingDiverged(JobError):
  """Too many consecutive non-finite steps: the job stops, its last good checkpoint intact."""


class NonfiniteSteps:
  """Reads each step's `nonfinite` flag; raises TrainingDiverged after `limit` in a row."""

  def __init__(self, limit: int, checkpoints: str):
    self.limit, self.checkpoints = limit, checkpoints
    self.in_a_row = 0
    self.total = 0  # in this run of the job

  def record(self, step: int, flag: jax.Array) -> None:
    """flag: the step's metrics['nonfinite'] (fetching it waits for that step)."""
    if float(jax.device_get(flag)) == 0.0:
      self.in_a_row = 0
      return
    self.in_a_row += 1
    self.total += 1
    logging.warning('step %d: non-finite loss or gradients, update skipped (%d in a row, %d in this run)', step,
                    self.in_a_row, self.total)
    if self.in_a_row >= self.limit:
      raise TrainingDiverged(
          f'train.max_nonfinite_steps: {self.in_a_row} consecutive steps up to step {step} had a non-finite loss or '
          f'gradients; stopped without saving them (the checkpoints under {self.checkpoints} are all finite). '
          'Lower train.learning_rate or check the data, then rerun to resume from the last checkpoint')
