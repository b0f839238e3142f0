"""Fine-tuning under the faults pretraining survives: preemption (SIGTERM), non-finite steps, and a GLUE rerun
after the pretraining run it fine-tunes has moved on."""
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from finetune import checks, data, features, glue, glue_task, train
from finetune.tasks import TASKS
from pretrain import optim
from pretrain.model import load as model_load
from pretrain.nonfinite import TrainingDiverged
from pretrain.runtime import preemption, sharding
from tests.checkpoint_fixtures import pretrain_checkpoint
from tests.glue_fixtures import write_task
from tests.test_finetune import ROOT, _fails_before_compiling, _small

OVERFLOWING_SCORE = '1e30'  # an STS-B score whose squared error overflows float32: that batch's loss is inf


@pytest.fixture(scope='module')
def checkpoint(checkpoints):
  return checkpoints('mlm', steps=3)  # the session's tiny bert, as in test_finetune


def _glue_args(checkpoint, glue_dir, workdir):
  return ['--checkpoint', str(checkpoint), '--data', f'glue_dir:{glue_dir}', '--workdir', str(workdir), '--tasks',
          'sst2', '--set', 'train.batch_size=8', '--set', 'train.eval_batch_size=16', '--set', 'train.epochs=2',
          '--set', 'data.max_length=32']


def test_glue_reruns_a_preempted_run_and_nothing_claims_results_before_an_epoch_ends(checkpoint, tmp_path,
                                                                                     monkeypatch, caplog):
  """SIGTERM itself is test_sigterm_...; here the watch reports preemption at a chosen step (2 steps an epoch)."""
  write_task(tmp_path / 'glue', 'sst2')  # 12 train rows: 2 steps of 8 an epoch
  args = _glue_args(checkpoint, tmp_path / 'glue', tmp_path / 'out')
  run_dir, glue_results = tmp_path / 'out' / 'sst2' / 'seed_0', tmp_path / 'out' / 'glue_results.json'
  for stop_at in (1, 3):
    monkeypatch.setattr(preemption.PreemptionWatch, 'reached', lambda self, step, stop_at=stop_at: step >= stop_at)
    with caplog.at_level(logging.WARNING):
      assert glue.main(args) == 0
    assert not glue_results.exists()
    if stop_at == 1:  # in the first epoch: nothing claims to be results
      assert not (run_dir / 'results.json').exists() and not (run_dir / 'checkpoints').exists()
      assert 'preempted: stopped at step 1 of 4, before the first epoch finished: no results written' in caplog.text
    else:
      results = json.loads((run_dir / 'results.json').read_text())
      assert (results['preempted'], results['stopped_at_step'], len(results['epochs'])) == (True, 3, 1)
      assert [p.name for p in (run_dir / 'checkpoints').iterdir()] == ['2']  # epoch 1's
    assert 'glue: preempted before finishing run 1/1 (sst2 seed 0); rerun the same command' in caplog.text
    caplog.clear()
  monkeypatch.undo()
  shutil.copytree(run_dir / 'checkpoints' / '2', run_dir / 'checkpoints' / '99')  # as an earlier, longer run left
  assert glue.main(args) == 0  # not reused: trained again, in full
  results = json.loads((run_dir / 'results.json').read_text())
  assert (results['preempted'], results['stopped_at_step'], len(results['epochs'])) == (False, 4, 2)
  assert json.loads(glue_results.read_text())['tasks']['sst2']['dev/accuracy']['values'] == [
      100 * results['dev']['accuracy']]
  assert model_load.load_checkpoint(results['checkpoint']).classifier['task'] == 'sst2'  # kept, not the stale 99
  assert sorted(p.name for p in (run_dir / 'checkpoints').iterdir()) == [pathlib.Path(results['checkpoint']).name]


def test_glue_rerun_after_more_pretraining_fine_tunes_the_new_step(checkpoint, tmp_path):
  workdir = tmp_path / 'pretrain'
  shutil.copytree(checkpoint, workdir)  # the session's is read only
  write_task(tmp_path / 'glue', 'sst2')
  args = _glue_args(workdir, tmp_path / 'glue', tmp_path / 'out')
  run_results = tmp_path / 'out' / 'sst2' / 'seed_0' / 'results.json'

  def glue_run() -> tuple[dict, dict, int]:
    assert glue.main(args) == 0
    return (json.loads((tmp_path / 'out' / 'glue_results.json').read_text()), json.loads(run_results.read_text()),
            run_results.stat().st_mtime_ns)

  out, results, written = glue_run()
  assert (out['checkpoint_step'], out['checkpoint_dir']) == (3, str(workdir / 'checkpoints' / '3'))
  assert results['init_checkpoint'] == str(workdir / 'checkpoints' / '3')
  assert glue_run()[2] == written  # nothing new: reused

  pretrain_checkpoint(workdir, 'mlm', steps=5)  # the same run resumes and goes on to step 5
  out, results, rewritten = glue_run()
  assert (out['checkpoint_step'], out['checkpoint_dir']) == (5, str(workdir / 'checkpoints' / '5'))
  assert results['init_checkpoint'] == str(workdir / 'checkpoints' / '5') and rewritten != written
  assert out['tasks']['sst2']['dev/accuracy']['values'] == [100 * results['dev']['accuracy']]
  assert glue_run()[2] == rewritten  # and that is reused in turn


def _dev_predictions(step_dir: str, glue_dir: pathlib.Path, length: int) -> list[str]:
  """What a restored checkpoint predicts for the SST-2 dev sentences (labels as the task spells them)."""
  loaded = model_load.load_checkpoint(step_dir)
  examples = data.read_split(glue_dir, TASKS['sst2'], 'dev.tsv', with_labels=True)
  arrays = features.to_arrays(features.token_rows(examples, loaded.tokenizer, length), length, loaded.tokenizer.pad_id)
  logits = loaded.build()(arrays['tokens'], arrays['token_type_ids'], arrays['segment_ids'], None)
  return [TASKS['sst2'].labels[i] for i in np.argmax(np.asarray(logits), axis=-1)]


def test_sigterm_keeps_the_best_finished_epoch_and_exits_0(checkpoint, tmp_path):
  write_task(tmp_path / 'glue', 'sst2', rows=64)  # 64 train rows: 8 steps of 8 an epoch, 30 epochs
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1')
  process = subprocess.Popen(
      [sys.executable, '-m', 'finetune', '--config', 'configs/finetune_glue.py:task=sst2', '--workdir',
       str(tmp_path / 'run'), f'--config.init_checkpoint={checkpoint}',
       f'--config.data.source=glue_dir:{tmp_path / "glue"}', '--config.train.batch_size=8',
       '--config.train.eval_batch_size=16', '--config.train.epochs=30', '--config.train.log_every=1',
       '--config.data.max_length=32', '--config.train.learning_rate=1e-3'],
      cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
  lines, signalled = [], False
  deadline = time.monotonic() + 600
  for line in process.stderr:
    lines.append(line)
    step = re.search(r'step (\d+)/240 ', line)
    if not signalled and step and int(step.group(1)) > 8:  # epoch 1 has been evaluated
      process.send_signal(signal.SIGTERM)
      signalled = True
    assert time.monotonic() < deadline, ''.join(lines[-20:])
  stderr = ''.join(lines)
  assert process.wait(timeout=60) == 0 and signalled, stderr[-3000:]
  assert 'Traceback' not in stderr

  run = tmp_path / 'run'
  results = json.loads((run / 'results.json').read_text())
  stopped, best = results['stopped_at_step'], results['best_epoch']
  assert results['preempted'] and 8 < stopped < 240 and results['total_steps'] == 240
  assert len(results['epochs']) == (stopped - 1) // 8  # the finished (evaluated) epochs only
  assert results['dev'] == results['epochs'][best - 1]['dev']
  assert results['dev']['accuracy'] == max(e['dev']['accuracy'] for e in results['epochs'])
  warning = (f'preempted: stopped at step {stopped} of 240; results.json, predictions and checkpoint are of epoch '
             f'{best}, the best of {len(results["epochs"])} finished')
  assert sum(warning in line for line in lines) == 1, stderr[-3000:]
  assert results['checkpoint'] == str(run / 'checkpoints' / str(8 * best))  # the best epoch's step, restorable:
  predicted = _dev_predictions(results['checkpoint'], tmp_path / 'glue', results['padded_length'])
  dev_rows = [line.split('\t') for line in (run / 'predictions' / 'dev.tsv').read_text().splitlines()[1:]]
  assert predicted == [row[1] for row in dev_rows]
  assert np.mean([p == label for _, p, label in dev_rows]) == pytest.approx(results['dev']['accuracy'])


def _host_copy(tree):
  return jax.tree.map(lambda x: np.array(x, copy=True), jax.device_get(tree))


def test_a_non_finite_step_changes_nothing_but_the_step_counter(checkpoint, tmp_path):
  config = _stsb_config(checkpoint, _stsb_with_scores(tmp_path, bad_rows={3}))
  pretrained = checks.load_pretrained(config)
  task = glue_task.prepare(config, pretrained.tokenizer)
  mesh, rules = sharding.make_mesh(config.mesh), tuple(config.sharding_rules)
  optimizer = optim.make_optimizer(checks.optimizer_settings(config.train, total_steps=4))  # as the run below
  with sharding.use_mesh_and_rules(mesh, rules):
    compiled = train._compile(config, pretrained, task, mesh, rules, optimizer)
    batch = lambda rows: compiled.to_device(train._take(task.train, np.array(rows), 8, compiled.train_keys))
    before = _host_copy(compiled.state)
    state, metrics = compiled.train_step(compiled.state, batch(range(8)))  # row 3 scores 1e30
    after = _host_copy(state)
    assert float(metrics['nonfinite']) == 1.0 and not np.isfinite(float(metrics['loss']))
    assert int(after['step']) == int(before['step']) + 1
    for key in ('params', 'opt_state', 'rng'):
      jax.tree.map(np.testing.assert_array_equal, before[key], after[key])
    state, metrics = compiled.train_step(state, batch(range(8, 16)))
    assert float(metrics['nonfinite']) == 0.0
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), before['params'], _host_copy(state['params']))
    assert all(jax.tree.leaves(changed['head']))


def _stsb_with_scores(root: pathlib.Path, bad_rows) -> pathlib.Path:
  """An STS-B directory of 16 train rows, those in `bad_rows` scored OVERFLOWING_SCORE."""
  write_task(root, 'stsb', rows=16)
  path = root / 'STS-B' / 'train.tsv'
  header, *rows = path.read_text().splitlines()
  rows = ['\t'.join([*row.split('\t')[:-1], OVERFLOWING_SCORE]) if i in bad_rows else row for i, row in enumerate(rows)]
  path.write_text('\n'.join([header, *rows]) + '\n')
  return root


def _stsb_config(checkpoint, glue_dir: pathlib.Path):
  config = _small('stsb', epochs=2, log_every=1)  # 2 steps of 8 an epoch
  config.init_checkpoint, config.data.source = str(checkpoint), f'glue_dir:{glue_dir}'
  return config


def test_non_finite_steps_are_skipped_and_counted_and_k_in_a_row_stop_the_run(checkpoint, tmp_path, caplog):
  config = _stsb_config(checkpoint, _stsb_with_scores(tmp_path / 'one_bad', bad_rows={5}))
  with caplog.at_level(logging.WARNING):
    results = train.run(config, str(tmp_path / 'run'))
  assert results['skipped_steps'] == 2  # the bad row's batch, once an epoch
  assert caplog.text.count('non-finite loss or gradients, update skipped') == 2
  assert all(np.isfinite(e['train_loss']) and np.isfinite(e['dev']['pearson']) for e in results['epochs'])
  records = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['skipped_steps'] for r in records if 'skipped_steps' in r][-1] == 2
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['skipped_steps'] == 2

  config.data.source = f'glue_dir:{_stsb_with_scores(tmp_path / "all_bad", bad_rows=range(16))}'
  config.train.max_nonfinite_steps = 3
  with pytest.raises(TrainingDiverged, match=r'^train\.max_nonfinite_steps: 3 consecutive steps up to step 3 had a '
                                             r'non-finite loss or gradients; stopped without writing results'):
    train.run(config, str(tmp_path / 'run'))  # the same workdir: the earlier results do not stay
  assert not (tmp_path / 'run' / 'results.json').exists()


def test_fine_tuning_into_a_pretraining_workdir_is_refused_before_it_replaces_a_checkpoint(checkpoint, tmp_path,
                                                                                          monkeypatch):
  """A fine-tuning run keeps one checkpoint in its workdir, replacing what is there: not a pretraining run's."""
  workdir = tmp_path / 'pretrain'
  shutil.copytree(checkpoint, workdir)
  write_task(tmp_path / 'glue', 'sst2')
  config = _small()
  config.init_checkpoint, config.data.source = str(workdir), f'glue_dir:{tmp_path / "glue"}'
  _fails_before_compiling(monkeypatch, config, workdir, r'--workdir: .*/pretrain holds checkpoints that are not '
                          r'fine-tuned \(step 3\), which this run would replace; use another --workdir')
  assert [p.name for p in (workdir / 'checkpoints').iterdir()] == ['3']
