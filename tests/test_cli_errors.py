"""What the entry points leave on disk and on stderr when they fail: files written whole, and, for bug reports,
the traceback behind a one-line error when FLAX_PRETRAIN_TRACEBACK=1."""
import os
import subprocess
import sys

import pytest

from pretrain.runtime import files
from tests.helpers import MLM_CONFIG, ROOT


def _pretrain(tmp_path, **env):
  return subprocess.run([sys.executable, '-m', 'pretrain', '--config', MLM_CONFIG, '--workdir', str(tmp_path),
                         '--config.model.num_heads=5'], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env={**os.environ, **env})


def test_the_traceback_switch_prints_what_the_one_line_error_hides(tmp_path):
  quiet, loud = _pretrain(tmp_path), _pretrain(tmp_path, FLAX_PRETRAIN_TRACEBACK='1')
  line = 'error: model.num_heads: 5 does not divide model.hidden_size 256'
  for result in (quiet, loud):
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == line, result.stderr[-2000:]
  assert 'Traceback' not in quiet.stderr
  traceback = loud.stderr[loud.stderr.index('Traceback (most recent call last):'):]
  assert 'pretrain/model/config.py' in traceback and 'ConfigError: model.num_heads: 5' in traceback


def test_a_tools_error_shows_its_traceback_with_the_switch(tmp_path, monkeypatch, capsys):
  from tools.plan import cli as plan_cli  # pylint: disable=import-outside-toplevel
  argv = ['--config', MLM_CONFIG, '--devices', '8', '--config.model.num_heads=5']
  assert plan_cli.main(argv) == 2
  assert 'Traceback' not in capsys.readouterr().err
  monkeypatch.setenv('FLAX_PRETRAIN_TRACEBACK', '1')
  assert plan_cli.main(argv) == 2
  err = capsys.readouterr().err
  assert 'Traceback (most recent call last):' in err and err.strip().splitlines()[-1].startswith('error: model.')


def test_write_atomic_flushes_the_file_before_the_rename_and_the_directory_after(tmp_path, monkeypatch):
  """The order that makes a crash or power loss leave the old contents or the new, never an empty file: the data
  reach the disk before the rename points the name at them, and the rename reaches the disk before we go on."""
  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    events.append(('fsync', os.readlink(f'/proc/self/fd/{fd}')))
    real_fsync(fd)

  def replace(src, dst):
    events.append(('replace', str(dst)))
    real_replace(src, dst)
  monkeypatch.setattr(os, 'fsync', fsync)
  monkeypatch.setattr(os, 'replace', replace)
  target = tmp_path / 'config.json'
  target.write_text('old')
  files.write_atomic(target, '{"new": true}')
  assert target.read_text() == '{"new": true}'
  assert len(events) == 3 and events[1] == ('replace', str(target)), events
  assert events[0][0] == 'fsync' and events[0][1].startswith(str(tmp_path / 'config.json.tmp'))
  assert events[2] == ('fsync', str(tmp_path))
  assert [p.name for p in tmp_path.iterdir()] == ['config.json']


@pytest.mark.parametrize('data', ['text', b'\x00bytes'])
def test_write_atomic_writes_text_and_bytes(tmp_path, data):
  files.write_atomic(tmp_path / 'sub' / 'f', data)
  assert (tmp_path / 'sub' / 'f').read_bytes() == (data.encode() if isinstance(data, str) else data)
