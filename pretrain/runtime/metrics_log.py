"""Where training reports go: a progress line, WORKDIR/metrics.jsonl and TensorBoard event files (process 0)."""
import json
import pathlib
import sys
import time
import traceback

import logging as py_logging

from absl import logging

from pretrain.runtime.files import write_atomic

# What a train record measures of the machine rather than of the run (differs between otherwise equal runs).
TIMING_FIELDS = ('tokens_per_sec', 'step_time_ms', 'model_tflops_per_sec', 'mfu')

_CHATTY_LIBRARIES = ('/orbax/', '/grain/', '/jax/_src/xla_bridge', '/jax/_src/distributed')


def _in_library(path: str) -> bool:
  return any(s in path for s in _CHATTY_LIBRARIES)


class _QuietLibraries(py_logging.Filter):
  """Drops the libraries' INFO lines, and the tracebacks of their errors (ours re-raise them as one line), also
  when asyncio logs them (`Task exception was never retrieved` for each of Orbax's failed parallel writes)."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    library = _in_library(record.pathname)
    if record.exc_info and (library or any(_in_library(frame.filename)
                                           for frame in traceback.extract_tb(record.exc_info[2]))):
      record.exc_info, record.exc_text = None, None
    return record.levelno >= py_logging.WARNING or not library


def quiet_library_logs() -> None:
  """Keeps the progress lines readable: INFO lines of orbax, grain and jax start-up are dropped."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def _format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  return f'{hours}h{rest // 60:02d}m' if hours else f'{rest // 60}m{rest % 60:02d}s'


def _step_of(line: str) -> int | None:
  try:
    return int(json.loads(line)['step'])
  except (ValueError, KeyError, TypeError):
    return None  # a line cut short by a kill


def truncate_after(path: pathlib.Path, step: int) -> None:
  """Drops lines logged after `step` by a run that died before its next checkpoint (a resume rewrites them)."""
  if not path.exists():
    return
  steps = [(line, _step_of(line)) for line in path.read_text().splitlines()]
  kept = [line for line, line_step in steps if line_step is not None and line_step <= step]
  write_atomic(path, ''.join(line + '\n' for line in kept))


def summary_writer_class():
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch whenever it is installed,
  only to accept torch tensors (we log floats): that costs a process 3-5 s and 0.6 GB. A torch already imported
  stays; a later `import torch` works as usual."""
  blocked = 'torch' not in sys.modules
  if blocked:
    sys.modules['torch'] = None  # `import torch` raises ImportError meanwhile
  try:
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
  finally:
    if blocked:
      del sys.modules['torch']
  return SummaryWriter


class MetricsLog:

  def __init__(self, workdir: str, total_steps: int, start_step: int, enabled: bool = True,
               flops_per_token: float | None = None, peak_flops_per_s: float | None = None, num_devices: int = 1):
    """flops_per_token: model FLOPs (pretrain.model.flops) for model TFLOP/s per device; peak_flops_per_s: all
    devices' peak together, for MFU (None: unknown, e.g. CPU)."""
    self.enabled = enabled
    self.total_steps = total_steps
    self.flops_per_token, self.peak_flops_per_s, self.num_devices = flops_per_token, peak_flops_per_s, num_devices
    self.last_time, self.last_step = time.perf_counter(), start_step
    self.writer = None
    self.path = pathlib.Path(workdir) / 'metrics.jsonl'
    if not enabled:
      return
    truncate_after(self.path, start_step)
    try:
      SummaryWriter = summary_writer_class()  # pylint: disable=invalid-name
      self.writer = SummaryWriter(str(pathlib.Path(workdir) / 'tensorboard'), purge_step=start_step + 1)
    except ImportError:
      logging.warning('tensorboardX is not installed: no TensorBoard event files')

  def _write(self, record: dict) -> None:
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')
    if self.writer is not None:
      for key, value in record.items():
        if key != 'step' and value is not None:
          self.writer.add_scalar(key, value, record['step'])
      self.writer.flush()

  def reset_clock(self, step: int) -> None:
    """Restarts the throughput clock (after an evaluation or a checkpoint save, which are not step time)."""
    self.last_time, self.last_step = time.perf_counter(), step

  def train(self, step: int, metrics: dict, tokens_per_step: int, done_at: float | None = None) -> None:
    """done_at: the time.perf_counter() at which `step` was known to be finished (default: now). The rate covers
    the steps since the last line (or reset_clock): the caller must have waited for `step`, and for no later
    step, by then."""
    now = time.perf_counter() if done_at is None else done_at
    seconds_per_step = (now - self.last_time) / max(step - self.last_step, 1)
    self.last_time, self.last_step = now, step
    record = {'step': step, **{k: float(v) for k, v in metrics.items()},
              'tokens_per_sec': tokens_per_step / seconds_per_step, 'step_time_ms': 1000 * seconds_per_step}
    speed = ''
    if self.flops_per_token:
      model_flops_per_s = record['tokens_per_sec'] * self.flops_per_token
      record['model_tflops_per_sec'] = model_flops_per_s / self.num_devices / 1e12  # per device
      speed = f' | {record["model_tflops_per_sec"]:.3g} TFLOP/s/device'
      if self.peak_flops_per_s:
        record['mfu'] = model_flops_per_s / self.peak_flops_per_s
        speed = f' | MFU {100 * record["mfu"]:.1f}%'
    if not self.enabled:
      return
    self._write(record)
    accuracy = f' | acc {record["accuracy"]:.3f}' if 'accuracy' in record else ''
    if 'sentence_accuracy' in record:
      accuracy += f' | sentence loss {record["sentence_loss"]:.4f} acc {record["sentence_accuracy"]:.3f}'
    logging.info('step %d/%d | loss %.4f%s | lr %.2e | %s tok/s | %.0f ms/step%s | ETA %s', step, self.total_steps,
                 record['loss'], accuracy, record['learning_rate'], f'{record["tokens_per_sec"]:,.0f}',
                 record['step_time_ms'], speed, _format_duration(seconds_per_step * (self.total_steps - step)))

  def eval(self, step: int, metrics: dict) -> None:
    record = {'step': step, **{k: float(v) for k, v in metrics.items()}}
    if not self.enabled:
      return
    self._write(record)
    logging.info('eval step %d | %s', step, ' | '.join(f'{k} {v:.4f}' for k, v in record.items() if k != 'step'))

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
