"""Torn and truncated checkpoints, a full disk, an unwritable workdir: detected, named, and nothing good is lost."""
import logging
import pathlib
import subprocess
import sys

import pytest

from pretrain import train
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import ConfigError
from tests.helpers import MLM_CONFIG, ROOT, TINY_OVERRIDES, tiny_config
from tools import kill_soak


def _config(steps=6, **train_overrides):
  config = tiny_config('mlm')
  config.train.update(steps=steps, log_every=1, eval_every=steps, eval_batches=1, checkpoint_every=2,
                      keep_checkpoints=5, **train_overrides)
  return config


def _largest_file(directory: pathlib.Path) -> pathlib.Path:
  return max((p for p in directory.rglob('*') if p.is_file()), key=lambda p: p.stat().st_size)


def _same_checkpoint(a: pathlib.Path, b: pathlib.Path, step: int) -> bool:
  (state_a, data_a), (state_b, data_b) = kill_soak.final_state(a, step), kill_soak.final_state(b, step)
  import jax  # pylint: disable=import-outside-toplevel
  same = jax.tree.map(lambda x, y: x.tobytes() == y.tobytes(), state_a, state_b)
  return all(jax.tree.leaves(same)) and data_a == data_b


def test_torn_and_truncated_checkpoints_are_set_aside_and_the_newest_good_one_resumes(tmp_path, caplog):
  config = _config()
  train.run(config, tmp_path / 'reference')
  train.run(config, tmp_path / 'damaged')
  checkpoints = tmp_path / 'damaged' / 'checkpoints'
  assert sorted(p.name for p in checkpoints.iterdir()) == ['2', '4', '6']
  big = _largest_file(checkpoints / '6' / 'state')
  with big.open('r+b') as f:  # a truncated array file in the newest step
    f.truncate(big.stat().st_size // 2)
  (checkpoints / '4' / checkpoint_lib.COMMIT_MARKER).unlink()  # a step that never committed

  with caplog.at_level(logging.WARNING):
    summary = train.run(config, tmp_path / 'damaged')
  warnings = '\n'.join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
  assert f'{checkpoints / "4"} is unusable: no commit marker' in warnings
  assert f'{checkpoints / "6"} is unusable: it does not restore' in warnings
  assert summary['step'] == 6
  # Resumed from step 2, redid steps 3..6, and ended exactly where the undamaged run did.
  assert _same_checkpoint(tmp_path / 'reference', tmp_path / 'damaged', 6)
  # Nothing deleted: the damaged steps are kept aside for inspection.
  assert sorted(p.name for p in (tmp_path / 'damaged' / 'corrupt_checkpoints').iterdir()) == ['4', '6']


def test_when_no_checkpoint_restores_nothing_is_moved_and_the_error_names_them(tmp_path):
  config = _config(steps=2)
  train.run(config, tmp_path)
  step_dir = tmp_path / 'checkpoints' / '2'
  big = _largest_file(step_dir / 'state')
  with big.open('r+b') as f:
    f.truncate(100)
  with pytest.raises(ConfigError, match=r'checkpoint: no checkpoint under .*checkpoints restores \(step 2: '):
    train.run(config, tmp_path)
  assert step_dir.is_dir() and not (tmp_path / 'corrupt_checkpoints').exists()


def test_tools_skip_a_step_without_its_commit_marker(tmp_path, caplog):
  config = _config(steps=4)
  train.run(config, tmp_path)
  (tmp_path / 'checkpoints' / '4' / checkpoint_lib.COMMIT_MARKER).unlink()
  with caplog.at_level(logging.WARNING):
    assert checkpoint_lib.resolve(tmp_path) == (tmp_path / 'checkpoints', 2)
  assert 'no commit marker' in caplog.text and str(tmp_path / 'checkpoints' / '4') in caplog.text
  with pytest.raises(ConfigError, match='has no commit marker'):
    checkpoint_lib.resolve(tmp_path / 'checkpoints' / '4')


def _pretrain(workdir, *overrides, file_size_kib=None):
  command = [sys.executable, '-m', 'pretrain', '--config', MLM_CONFIG, '--workdir', str(workdir), *TINY_OVERRIDES,
             '--config.train.checkpoint_every=2', '--config.train.eval_every=100', '--config.train.eval_batches=1',
             *overrides]
  if file_size_kib:  # a write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC
    command = ['bash', '-c', f'ulimit -f {file_size_kib} && exec "$@"', 'bash', *command]
  return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_failed_checkpoint_write_is_one_clear_error_and_the_committed_ones_restore(tmp_path):
  first = _pretrain(tmp_path, '--config.train.steps=4')
  assert first.returncode == 0, first.stderr[-2000:]
  # 32 KiB: the logs, the tokenizer and the JSON items still fit; the arrays' data files do not.
  # keep 2: committing step 6 would delete step 2, so step 2 surviving shows nothing is deleted before a commit.
  full = _pretrain(tmp_path, '--config.train.steps=8', '--config.train.keep_checkpoints=2', file_size_kib=32)
  assert full.returncode == 1, full.stderr[-3000:]
  last = full.stderr.strip().splitlines()[-1]
  assert last == (f'error: checkpoint: writing to {tmp_path / "checkpoints"} failed (File too large); the '
                  'committed checkpoints (steps [2, 4]) are intact: free space or fix the directory, then rerun '
                  'to resume'), last
  assert 'Traceback' not in full.stderr
  assert kill_soak.committed_steps(tmp_path) == [2, 4]
  again = _pretrain(tmp_path, '--config.train.steps=8')
  assert again.returncode == 0, again.stderr[-2000:]
  assert 'resumed from' in again.stderr and 'at step 4' in again.stderr
  assert kill_soak.committed_steps(tmp_path)[-1] == 8


@pytest.mark.parametrize('kind', ['under_a_file', 'read_only'])
def test_an_unwritable_workdir_is_rejected_before_anything_runs(tmp_path, kind):
  if kind == 'under_a_file':
    (tmp_path / 'file').write_text('x')
    workdir = tmp_path / 'file' / 'run'
  else:
    workdir = tmp_path / 'ro'
    workdir.mkdir()
    workdir.chmod(0o555)
    if _can_write(workdir):  # root ignores modes: use a filesystem where nobody may create files
      workdir = pathlib.Path('/proc/self/run')
  result = _pretrain(workdir, '--config.train.steps=2')
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith(f'error: --workdir: {workdir} is not a writable directory'), last
  assert 'compiled' not in result.stderr


def _can_write(directory: pathlib.Path) -> bool:
  try:
    (directory / 'probe').write_text('x')
  except OSError:
    return False
  (directory / 'probe').unlink()
  return True
