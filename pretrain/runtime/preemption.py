"""Graceful preemption: SIGTERM (what TPU and cloud preemption sends) ends the job cleanly at a step boundary.

One process: our SIGTERM handler sets a flag that the loop reads after each step. Several processes: JAX's
preemption service (started by jax.distributed.initialize) catches SIGTERM on any host and agrees on one step
at which every host stops, so all of them save the same checkpoint.
"""
import signal
import threading

import jax
from absl import logging


class PreemptionWatch:
  """Use as a context manager around the train loop; `reached(step)` after every step, on every process."""

  def __init__(self):
    self.signalled = False
    self._installed, self._previous = False, None  # _previous may be None: a handler not set from Python

  def _on_sigterm(self, signum, frame):  # pylint: disable=unused-argument
    if not self.signalled:
      logging.warning('SIGTERM: finishing the current step, then saving a checkpoint and exiting')
    self.signalled = True

  def __enter__(self) -> 'PreemptionWatch':
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
      self._installed = True
    return self

  def __exit__(self, *exc) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False

  def reached(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self.signalled
