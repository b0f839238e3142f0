"""train.profile_steps: a jax.profiler trace of a few train steps, for TensorBoard's profile plugin or Perfetto.

Steps count from 0 like the state's step counter: step s is the one that runs with s steps done (its metrics line
says step s + 1). The trace goes to WORKDIR/profile/plugins/profile/<time>/: <host>.xplane.pb (TensorBoard, with
tensorboard-plugin-profile: `tensorboard --logdir WORKDIR/profile`), <host>.trace.json.gz and
perfetto_trace.json.gz (ui.perfetto.dev). The traced steps' log lines show the trace's overhead and its writing.
"""
import contextlib
import pathlib

import jax
from absl import logging


class StepProfiler:
  """Traces the steps in [start, stop) of `span` (None: none) on this process when `enabled` (the main one).

  The loop calls before(step) and after(outputs) around each step, and close() in a `finally`. A run that starts
  (resumes) past start traces the remaining steps up to stop, one past stop nothing."""

  def __init__(self, span: tuple[int, int] | None, workdir: str, enabled: bool = True):
    self.span = span if enabled else None
    self.directory = pathlib.Path(workdir) / 'profile'
    self._first = None  # the first traced step, while a trace runs
    self._step = None  # the newest traced step
    self._annotation = None
    self._outputs = None  # the newest traced step's outputs

  def before(self, step: int) -> None:
    """Starts the trace at the first step in the span, and the step's annotation."""
    if self.span is None or not self.span[0] <= step < self.span[1]:
      return
    if self._first is None:
      jax.profiler.start_trace(self.directory, create_perfetto_trace=True)
      self._first = step
      logging.info('profiling steps %d..%d into %s', step, self.span[1] - 1, self.directory)
    self._step = step
    self._annotation = jax.profiler.StepTraceAnnotation('train', step_num=step)
    self._annotation.__enter__()

  def after(self, outputs) -> None:
    """Ends the step's annotation; after the span's last step, waits for it (its device work belongs in the trace)
    and stops the trace. outputs: the step's results (the metrics: what the next step does not donate)."""
    if self._annotation is None:
      return
    self._end_annotation()
    self._outputs = outputs
    if self._step + 1 == self.span[1]:
      self.close()

  def close(self) -> None:
    """Stops a trace still running: the loop ended before stop (or raised); a no-op otherwise."""
    if self._first is None:
      return
    self._end_annotation()
    outputs, self._outputs = self._outputs, None
    try:
      # A step's error surfaces here only when the loop has raised (it reads every step's flag): that one propagates.
      with contextlib.suppress(Exception):
        jax.block_until_ready(outputs)
    finally:
      first, last, self._first = self._first, self._step, None
      jax.profiler.stop_trace()
      runs = sorted((self.directory / 'plugins' / 'profile').iterdir(), key=lambda p: p.stat().st_mtime)
      logging.info('profile of steps %d..%d written to %s (`tensorboard --logdir %s` with tensorboard-plugin-profile, '
                   'or its perfetto_trace.json.gz on ui.perfetto.dev)', first, last, runs[-1], self.directory)

  def _end_annotation(self) -> None:
    if self._annotation is not None:
      annotation, self._annotation = self._annotation, None
      annotation.__exit__(None, None, None)
