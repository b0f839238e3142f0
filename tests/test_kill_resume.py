"""The real `python -m pretrain`, SIGKILLed at random moments or SIGTERMed, ends exactly as an uninterrupted run."""
import shutil
import signal
import time

import pytest

from tests.helpers import MLM_CONFIG
from tools import kill_soak

STEPS = 20  # the tool's 40 for its 10 kills (about 4 steps a kill), fewer for the fast tier's runs
OVERRIDES = [*kill_soak.DEFAULT_OVERRIDES, f'--config.train.steps={STEPS}']


@pytest.fixture(scope='module')
def soaked(tmp_path_factory):
  """What `python -m tools.kill_soak --kills 2` runs: an uninterrupted run (ROOT/reference), then one killed
  twice at random moments and restarted (ROOT/killed); returns (ROOT, report)."""
  root = tmp_path_factory.mktemp('soak')
  return root, kill_soak.run_soak(MLM_CONFIG, OVERRIDES, root, kills=2, seed=7, say=print)


def _check(root, kills, steps=STEPS):
  assert all(k.resumed == k.committed for k in kills)  # each restart resumed from the newest committed step
  kill_soak.compare(root / 'reference', root / 'killed', steps)  # params, optimizer, step, RNG, data, losses


def test_two_random_sigkills_lose_nothing_and_end_bit_identical(soaked):
  root, report = soaked
  assert len(report.kills) == 2
  _check(root, report.kills)


def test_ten_random_sigkills_lose_nothing_and_end_bit_identical(tmp_path):
  """What `python -m tools.kill_soak --kills 10` runs (40 steps)."""
  kills = kill_soak.run_soak(MLM_CONFIG, kill_soak.DEFAULT_OVERRIDES, tmp_path, kills=10, seed=7, say=print).kills
  assert len(kills) == 10
  assert {k.moment for k in kills} == set(kill_soak.MOMENTS)
  assert any(k.committed for k in kills)
  assert any(k.cut_save for k in kills)  # at least one kill landed inside an asynchronous checkpoint write
  _check(tmp_path, kills, steps=40)


def test_soak_detects_a_run_that_does_not_end_identically(soaked, tmp_path):
  """compare() is not vacuous: a run whose last checkpoint is one step behind differs from the reference."""
  behind = tmp_path / 'behind'
  reference = soaked[0] / 'reference'
  shutil.copytree(reference, behind)
  shutil.rmtree(behind / 'checkpoints' / str(STEPS))
  shutil.copytree(reference / 'checkpoints' / str(STEPS - 2), behind / 'checkpoints' / str(STEPS))
  with pytest.raises(kill_soak.SoakFailure, match='differs from the uninterrupted run'):
    kill_soak.compare(reference, behind, STEPS)


def test_soak_detects_a_metrics_line_lost_to_a_kill(soaked, tmp_path):
  """compare() reads every line of metrics.jsonl, not only the losses a restart rewrites: the line of a committed
  step that a kill took before it reached the disk is a failure (the resume keeps lines up to its step)."""
  lost = tmp_path / 'lost'
  reference = soaked[0] / 'reference'
  shutil.copytree(reference, lost)
  lines = (lost / 'metrics.jsonl').read_text().splitlines()
  (lost / 'metrics.jsonl').write_text(''.join(l + '\n' for l in lines if '"step": 10,' not in l or 'eval' in l))
  with pytest.raises(kill_soak.SoakFailure, match=r'metrics.jsonl differs from the uninterrupted run\'s at line 10'):
    kill_soak.compare(reference, lost, STEPS)


def test_sigterm_checkpoints_the_current_step_exits_0_and_the_rerun_resumes_exactly(soaked, tmp_path):
  """No regular checkpoint falls inside the run (checkpoint_every is past its end), so the one found after the
  SIGTERM can only be the preemption's own; the signal goes out after the odd step 9."""
  workdir = tmp_path / 'preempted'
  command = kill_soak.pretrain_command(MLM_CONFIG, [*OVERRIDES, '--config.train.checkpoint_every=1000'], workdir)
  proc = kill_soak.PretrainProcess(command, workdir, 'run0')
  while kill_soak._logged_steps(workdir) < 9:  # pylint: disable=protected-access
    assert proc.running(), proc.log_path.read_text()[-3000:]
    time.sleep(0.005)
  proc.process.send_signal(signal.SIGTERM)
  sent = time.monotonic()
  proc.finish()  # exit code 0
  log = proc.log_path.read_text()
  assert 'Traceback' not in log
  stopped = int(log.split('preempted: stopped at step ')[1].split()[0])
  assert 9 <= stopped < STEPS
  assert time.monotonic() - sent < 60
  assert kill_soak.committed_steps(workdir) == [stopped]  # a checkpoint of the step it stopped on, and no other

  rerun = kill_soak.PretrainProcess(command, workdir, 'run1')
  rerun.finish()
  assert rerun.resumed_step() == stopped
  kill_soak.compare(soaked[0] / 'reference', workdir, STEPS)


def test_kill_soak_command_line_rejects_bad_flags_before_running(tmp_path, capsys):
  assert kill_soak.main(['--kills', '-1', '--workdir', str(tmp_path)]) == 2
  assert capsys.readouterr().err.strip().splitlines()[-1] == 'error: --kills: must be >= 0, got -1'
  assert kill_soak.main(['--workdir', str(tmp_path), '--config.model.num_heads=3']) == 2
  assert 'model.num_heads' in capsys.readouterr().err
  assert not (tmp_path / 'reference').exists()
