"""Restore errors as Orbax raises them, for tests that inject them where a real disk, network filesystem or host
would fail (we run as root, so file modes cannot make one).

inject_eio(monkeypatch) makes the real `python -m pretrain` processes a test starts fail each restore of a step
with an I/O error: Python imports tests/restore_faults_shim/sitecustomize.py at their startup, which patches Orbax.
"""
import errno
import os
import pathlib

SHIM = pathlib.Path(__file__).parent / 'restore_faults_shim'


def inject_eio(monkeypatch, process: int | None = None) -> None:
  """Subprocesses started after this fail each restore of a step with EIO (in process `process` only, if given)."""
  paths = [str(SHIM), str(SHIM.parents[1]), os.environ.get('PYTHONPATH', '')]
  monkeypatch.setenv('PYTHONPATH', os.pathsep.join(path for path in paths if path))
  monkeypatch.setenv('RESTORE_FAULT', 'eio')
  if process is not None:
    monkeypatch.setenv('RESTORE_FAULT_PROCESS', str(process))


def orbax_read_error(state_dir: str, code: int, status: str = 'UNKNOWN') -> Exception:
  """What Orbax raises when TensorStore cannot read an array file for an OS error: its bare Exception, from the
  ValueError TensorStore raises (the message as TensorStore 0.1.86 writes it, e.g. for a symlink loop)."""
  file = f'{state_dir}/ocdbt.process_0/d/29f37482fdbbd174891f59c6560b8940'
  cause = ValueError(f'{status}: Error reading "params.w/0.0" in OCDBT database at local file "{state_dir}/": '
                     f"Failed to open: \"{file}\": {os.strerror(code)} [os_error_code='{code}']")
  error = Exception('Encountered error while reading array index: (slice(0, 16, 1), slice(0, 4, 1)). See full '
                    'TensorStore details: <TensorStore spec>.')
  error.__cause__ = cause
  return error


def install_from_environment() -> None:
  """What the shim runs: with RESTORE_FAULT=eio, reading a step's state item (StandardCheckpointHandler.restore, what
  the Checkpointer calls) raises orbax_read_error's EIO, in process RESTORE_FAULT_PROCESS only when that is set."""
  if os.environ.get('RESTORE_FAULT') != 'eio':
    return
  import jax  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  restore = ocp.StandardCheckpointHandler.restore
  victim = os.environ.get('RESTORE_FAULT_PROCESS')

  def failing_restore(self, directory, *args, **kwargs):
    if victim is None or int(victim) == jax.process_index():
      raise orbax_read_error(str(directory), errno.EIO)
    return restore(self, directory, *args, **kwargs)

  ocp.StandardCheckpointHandler.restore = failing_restore
