"""Reading the newest checkpoint fails for a reason other than known corruption (an I/O error, a timeout, a stale
file handle, a permission denied, out of memory, a mesh it does not fit): the run stops with one line naming the
step and the error, and nothing is moved. Known corruption is still set aside and an older step restores (also end
to end in test_checkpoint_faults.py). Two processes take the same decision: test_multihost_faults.py."""
import errno
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.restore_errors import RestoreError
from tests.restore_faults import inject_eio, orbax_read_error
from tests.test_checkpoint_faults import _largest_file, _pretrain
from tools import kill_soak

STOPPED = '; not known corruption, so nothing was moved aside: fix the cause and rerun to resume'


def _abstract(devices: int) -> dict:
  """A small state whose array is big enough (64 KiB) to live in its own data files, sharded over `devices`."""
  mesh = jax.make_mesh((devices,), ('x',), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:devices])
  return {'params': {'w': jax.ShapeDtypeStruct((256, 64), jnp.float32, sharding=NamedSharding(mesh, P('x')))},
          'step': jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))}


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A workdir with committed steps 1 and 2; every array of step N holds N."""
  workdir = tmp_path_factory.mktemp('saved')
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=5)
  for step in (1, 2):
    state = jax.tree.map(lambda a, s=step: jax.device_put(jnp.full(a.shape, s, a.dtype), a.sharding), _abstract(8))
    checkpointer.save(step, state, {'position': step}, {'config': {'step': step}})
  checkpointer.close()
  return workdir


@pytest.fixture
def workdir(saved, tmp_path):
  return shutil.copytree(saved, tmp_path / 'run')


def _restore_newest(workdir, devices: int = 8):
  return checkpoint_lib.Checkpointer(workdir).restore_newest(_abstract(devices), 2)


def _assert_nothing_moved(workdir):
  assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == ['1', '2']
  assert not (workdir / 'corrupt_checkpoints').exists()


def _os_error(code: int, path: str) -> OSError:
  return OSError(code, os.strerror(code), path)  # as Python's open() raises it: TimeoutError, PermissionError, ...


def _tensorstore(code: int, status: str = 'UNKNOWN'):
  return lambda state_dir: orbax_read_error(state_dir, code, status)


TROUBLE = {  # kind -> (the error the restore of step 2 raises, given its state dir; what the one line names)
    'EIO': (_tensorstore(errno.EIO), 'Input/output error'),
    # Older TensorStore releases report an OS error without a status of its own as FAILED_PRECONDITION, as bad data.
    'EIO as FAILED_PRECONDITION': (_tensorstore(errno.EIO, 'FAILED_PRECONDITION'), 'Input/output error'),
    'ETIMEDOUT': (lambda d: _os_error(errno.ETIMEDOUT, f'{d}/../data/metadata'), 'TimeoutError: [Errno 110]'),
    'ESTALE': (_tensorstore(errno.ESTALE), 'Stale file handle'),
    'EACCES': (lambda d: _os_error(errno.EACCES, f'{d}/_METADATA'), 'PermissionError: [Errno 13]'),
    'EACCES from TensorStore': (_tensorstore(errno.EACCES, 'PERMISSION_DENIED'), 'Permission denied'),
    'MemoryError': (lambda d: MemoryError(), 'MemoryError'),
    'XLA out of memory': (lambda d: jax.errors.JaxRuntimeError(
        'RESOURCE_EXHAUSTED: Out of memory while trying to allocate 268435456 bytes.'), 'RESOURCE_EXHAUSTED: Out of'),
}


@pytest.mark.parametrize('kind', TROUBLE)
def test_trouble_reading_the_newest_step_stops_with_one_line_and_moves_nothing(workdir, monkeypatch, kind):
  make_error, named = TROUBLE[kind]
  asked = []

  def failing_restore(self, directory, *args, **kwargs):
    asked.append(directory.parent.name)
    raise make_error(str(directory))

  monkeypatch.setattr(ocp.StandardCheckpointHandler, 'restore', failing_restore)
  with pytest.raises(RestoreError) as e:
    _restore_newest(workdir)
  message = str(e.value)
  assert message.startswith(f'checkpoint: step 2 ({workdir / "checkpoints" / "2"}) did not restore: '), message
  assert named in message and message.endswith(STOPPED) and '\n' not in message, message
  assert asked == ['2']  # no older step was tried instead
  _assert_nothing_moved(workdir)


def _symlink_loops(step_dir):
  """Every data file of the state item becomes a link to itself: a real OS error (ELOOP) from TensorStore."""
  for path in [p for p in (step_dir / 'state').rglob('*') if p.parent.name == 'd']:
    path.unlink()
    path.symlink_to(path.name)


@pytest.mark.parametrize('kind', ['a symlink loop', 'a mesh it does not fit'])
def test_real_trouble_stops_with_one_line_and_moves_nothing(workdir, kind):
  """No injection: Orbax's and TensorStore's own errors."""
  if kind == 'a symlink loop':
    _symlink_loops(workdir / 'checkpoints' / '2')
  with pytest.raises(RestoreError) as e:
    _restore_newest(workdir, devices=3 if kind == 'a mesh it does not fit' else 8)  # 256 rows do not split 3 ways
  message = str(e.value)
  assert message.startswith(f'checkpoint: step 2 ({workdir / "checkpoints" / "2"}) did not restore: '), message
  named = 'Too many levels of symbolic links' if kind == 'a symlink loop' else 'partitioned 3 times'
  assert named in message and message.endswith(STOPPED) and '\n' not in message, message
  _assert_nothing_moved(workdir)


def _truncate(path, size=None):
  with path.open('r+b') as f:
    f.truncate(path.stat().st_size // 2 if size is None else size)


def _garble(path):
  path.write_bytes(b'\0' * path.stat().st_size)


CORRUPTION = {
    'a truncated array file': lambda step_dir: _truncate(_largest_file(step_dir / 'state')),
    'a garbled array file': lambda step_dir: _garble(_largest_file(step_dir / 'state')),
    'a torn array metadata file': lambda step_dir: _truncate(step_dir / 'state' / '_METADATA'),
    'a torn data item': lambda step_dir: _truncate(step_dir / 'data' / 'metadata'),
    'a missing data item': lambda step_dir: shutil.rmtree(step_dir / 'data'),
}


@pytest.mark.parametrize('kind', CORRUPTION)
def test_known_corruption_is_set_aside_and_the_older_step_restores(workdir, caplog, kind):
  CORRUPTION[kind](workdir / 'checkpoints' / '2')
  with caplog.at_level(logging.WARNING):
    step, state, data_state = _restore_newest(workdir)
  assert (step, data_state, float(state['params']['w'][0, 0])) == (1, {'position': 1}, 1.0)
  assert f'{workdir / "checkpoints" / "2"} is unusable: it does not restore' in caplog.text
  assert [p.name for p in (workdir / 'checkpoints').iterdir()] == ['1']
  assert [p.name for p in (workdir / 'corrupt_checkpoints').iterdir()] == ['2']


def test_when_another_process_cannot_read_the_step_this_one_stops_too(workdir, monkeypatch):
  """This process reads step 2 whole; process 1 met an I/O error (its outcome stands in for the collective's)."""
  other = ['stop', 'Input/output error (ValueError: UNKNOWN: ...)']
  monkeypatch.setattr(checkpoint_lib.distributed, 'allgather_json', lambda mine: [mine, other])
  with pytest.raises(RestoreError) as e:
    _restore_newest(workdir)
  assert str(e.value) == (f'checkpoint: step 2 ({workdir / "checkpoints" / "2"}) did not restore on process 1 of 2: '
                          f'{other[1]}{STOPPED}')
  _assert_nothing_moved(workdir)


def test_a_meta_item_that_cannot_be_read_stops_and_a_torn_one_is_skipped(workdir, monkeypatch, caplog):
  directory = workdir / 'checkpoints'
  asked = []

  def failing_restore(self, path, *args, **kwargs):
    asked.append(path.parent.name)
    raise _os_error(errno.EIO, str(path / 'metadata'))

  with monkeypatch.context() as patch:
    patch.setattr(ocp.JsonCheckpointHandler, 'restore', failing_restore)
    with pytest.raises(RestoreError) as e:
      checkpoint_lib.newest_meta(directory)
  assert str(e.value) == (f'checkpoint: step 2 ({directory / "2"}): its meta item did not restore: OSError: [Errno 5] '
                          f"Input/output error: '{directory / '2' / 'meta' / 'metadata'}'{STOPPED}")
  assert asked == ['2']  # no older step was tried instead

  _truncate(directory / '2' / 'meta' / 'metadata')
  with caplog.at_level(logging.WARNING):
    assert checkpoint_lib.newest_meta(directory) == (1, {'config': {'step': 1}})
  assert f'{directory / "2"}: its meta item does not read (JSONDecodeError: ' in caplog.text
  _assert_nothing_moved(workdir)  # set aside only once the Checkpointer restores an older step


def test_cli_an_io_error_on_restore_is_one_line_exit_1_and_the_step_stays(checkpoints, tmp_path, monkeypatch):
  workdir = shutil.copytree(checkpoints('mlm', steps=3), tmp_path / 'run')  # the session's tiny run, at step 3
  inject_eio(monkeypatch)  # every restore of a step fails as on a failing disk
  # Its settings (tests/checkpoint_fixtures.py), so that it resumes.
  failed = _pretrain(workdir, '--config.model.num_heads=4', '--config.model.dropout_rate=0',
                     '--config.train.warmup_steps=2', '--config.train.steps=3')
  assert failed.returncode == 1, failed.stderr[-3000:]
  last = failed.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: checkpoint: step 3 ({workdir / "checkpoints" / "3"}) did not restore: '
                         'Input/output error (ValueError: UNKNOWN: Error reading '), last
  assert last.endswith(STOPPED) and 'Traceback' not in failed.stderr, failed.stderr[-3000:]
  assert kill_soak.committed_steps(workdir) == [3] and not (workdir / 'corrupt_checkpoints').exists()
