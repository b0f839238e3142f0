"""Non-finite loss or gradients: the step is skipped and counted; K in a row stop the job; no checkpoint is NaN,
and none is withheld: a checkpoint after a skipped step holds the last finite state.

The poison is real bad data: token ids beyond the vocabulary, whose embedding lookup is NaN.
"""
import json
import logging
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pretrain.data import pipeline as data_lib
from pretrain import train
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime import sharding
from pretrain.nonfinite import TrainingDiverged
from tests.helpers import MLM_CONFIG, ROOT, TINY_OVERRIDES, tiny_config
from tests.test_sharding import _batch, _mesh, _trainer
from tools import kill_soak

OUT_OF_VOCABULARY = 10_000


def _poison(batch: dict) -> dict:
  return {**batch, 'tokens': np.full_like(batch['tokens'], OUT_OF_VOCABULARY)}


def _host_copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_a_non_finite_step_changes_nothing_but_the_step_counter(objective):
  config = tiny_config(objective)
  config.train.warmup_steps = 0  # the optimizer's own count (and so its schedule) does not advance on a skip
  mesh = _mesh(config, jax.devices()[:2])
  trainer = _trainer(config, mesh)
  with sharding.use_mesh_and_rules(mesh, config.sharding_rules):
    state = trainer.init()
    before = _host_copy(state)  # device_get may share the (donated) buffers on CPU
    bad = sharding.global_batch_from_local(_poison(_batch(config)), trainer.batch_sharding)
    state, metrics = trainer.train_step(state, bad)
    after = _host_copy(state)
    assert float(metrics['nonfinite']) == 1.0 and not np.isfinite(float(metrics['loss']))
    assert int(after['step']) == int(before['step']) + 1
    for key in ('params', 'opt_state', 'rng'):
      jax.tree.map(np.testing.assert_array_equal, before[key], after[key])
    good = sharding.global_batch_from_local(_batch(config), trainer.batch_sharding)
    state, metrics = trainer.train_step(state, good)
    assert float(metrics['nonfinite']) == 0.0
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before['params'], _host_copy(state['params']))
    assert sum(jax.tree.leaves(changed)) > len(jax.tree.leaves(changed)) // 2  # (the unused pooler stays)


@pytest.fixture
def poisoned_steps(monkeypatch):
  """Train steps (1-based) whose batch is all out-of-vocabulary ids; set the returned set's contents."""
  bad = set()
  next_batch = data_lib._TrainIterator.__next__  # pylint: disable=protected-access

  def poisoned(self):
    batch = next_batch(self)
    return _poison(batch) if self.get_state()['step'] in bad else batch
  monkeypatch.setattr(data_lib._TrainIterator, '__next__', poisoned)  # pylint: disable=protected-access
  return bad


def _config(steps, **train_overrides):
  config = tiny_config('mlm')
  config.train.update(steps=steps, log_every=1, eval_every=steps, eval_batches=1, checkpoint_every=1,
                      keep_checkpoints=20, **train_overrides)
  return config


def _checkpoint_steps_are_finite(workdir) -> list[int]:
  steps = kill_soak.committed_steps(workdir)
  for step in steps:
    state, _ = kill_soak.final_state(workdir, step)
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state) if np.issubdtype(x.dtype, np.floating)), step
  return steps


def test_bad_steps_are_skipped_counted_and_training_goes_on(tmp_path, poisoned_steps, caplog):
  poisoned_steps.update({3, 4})
  with caplog.at_level(logging.WARNING):
    summary = train.run(_config(steps=7, max_nonfinite_steps=3), tmp_path)
  assert summary['step'] == 7 and np.isfinite(summary['loss'])
  assert 'step 3: non-finite loss or gradients, update skipped (1 in a row, 1 in this run)' in caplog.text
  assert 'step 4: non-finite loss or gradients, update skipped (2 in a row, 2 in this run)' in caplog.text
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  skipped = {r['step']: r['skipped_steps'] for r in records if 'skipped_steps' in r}
  assert skipped[7] == 2
  # A checkpoint after a skipped step too (the last finite state: step 2's parameters); every one is finite.
  assert _checkpoint_steps_are_finite(tmp_path) == [1, 2, 3, 4, 5, 6, 7]
  params = [kill_soak.final_state(tmp_path, step)[0]['params'] for step in (2, 3, 4)]
  jax.tree.map(np.testing.assert_array_equal, params[0], params[1])
  jax.tree.map(np.testing.assert_array_equal, params[0], params[2])
  assert 'steps of this run had a non-finite loss or gradients and changed nothing: 3, 4' in caplog.text


def test_a_non_finite_last_step_still_leaves_the_final_checkpoint_and_a_rerun_that_meets_it_says_so(
    tmp_path, poisoned_steps, caplog):
  """The last finite state is the final checkpoint (no progress lost, exit 0); a run resumed from before a skipped
  step warns that it meets that step again, and its warning says an earlier run skipped it too."""
  poisoned_steps.update({6})
  config = _config(steps=6, max_nonfinite_steps=3)
  config.train.keep_checkpoints = 2
  assert train.run(config, tmp_path)['step'] == 6
  assert _checkpoint_steps_are_finite(tmp_path) == [5, 6]
  last, before = (kill_soak.final_state(tmp_path, step)[0] for step in (6, 5))
  jax.tree.map(np.testing.assert_array_equal, last['params'], before['params'])
  assert int(last['step']) == 6
  assert json.loads((tmp_path / 'nonfinite_steps.json').read_text()) == {'steps': [6]}

  shutil.rmtree(tmp_path / 'checkpoints' / '6')  # as if killed before the final save committed
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert train.run(config, tmp_path)['step'] == 6
  assert 'an earlier run of this workdir skipped step 6 as non-finite; resuming from step 5, this run meets it' \
      in caplog.text
  assert 'step 6: non-finite loss or gradients, update skipped (1 in a row, 1 in this run); an earlier run skipped ' \
      'it too' in caplog.text


def test_k_bad_steps_in_a_row_stop_the_job_with_its_good_checkpoints_intact(tmp_path, poisoned_steps):
  poisoned_steps.update(range(3, 100))
  with pytest.raises(TrainingDiverged, match=r'^train\.max_nonfinite_steps: 4 consecutive steps up to step 6 had'):
    train.run(_config(steps=20, max_nonfinite_steps=4), tmp_path)
  assert _checkpoint_steps_are_finite(tmp_path) == [1, 2, 3, 4, 5]  # 3-5 hold step 2's parameters; 6 is not saved
  poisoned_steps.clear()  # the data fixed, the same command resumes from the last checkpoint
  assert train.run(_config(steps=8, max_nonfinite_steps=4), tmp_path)['step'] == 8


def test_a_nan_init_checkpoint_is_one_line_naming_the_parameter_exit_2_before_compiling(tmp_path):
  """Parameters that are already NaN would make every step a skipped one: refused before anything runs."""
  config = _config(steps=1)
  train.run(config, tmp_path / 'source')
  _, meta = checkpoint_lib.read_checked_meta(tmp_path / 'source', 'init_checkpoint')
  state, _ = kill_soak.final_state(tmp_path / 'source', 1)
  leaves, treedef = jax.tree.flatten(state['params'])
  leaves[0] = np.full_like(leaves[0], np.nan)
  checkpoint_lib.save_params(tmp_path / 'nan', 1, jax.tree.unflatten(treedef, leaves), meta)
  result = subprocess.run(
      [sys.executable, '-m', 'pretrain', '--config', MLM_CONFIG, '--workdir', str(tmp_path / 'run'), *TINY_OVERRIDES,
       '--config.train.steps=20', '--config.train.checkpoint_every=2', '--config.train.max_nonfinite_steps=3',
       f'--config.init_checkpoint={tmp_path / "nan"}'], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 2, result.stderr[-3000:]
  last = result.stderr.strip().splitlines()[-1]
  name = '.'.join(str(getattr(k, 'key', k)) for k in jax.tree_util.tree_leaves_with_path(state['params'])[0][0])
  assert last == f'error: init_checkpoint: parameter {name} of {tmp_path / "nan"} has non-finite values', last
  assert 'Traceback' not in result.stderr and 'compiled the train step' not in result.stderr
  assert kill_soak.committed_steps(tmp_path / 'run') == []
