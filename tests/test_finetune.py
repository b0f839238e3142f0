"""Fine-tuning end to end: the real CLIs from a tiny pretrained Orbax checkpoint on a tiny GLUE directory."""
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from configs import finetune_glue
from finetune import train
from finetune.tasks import TASKS
from pretrain.runtime.errors import ConfigError
from tests.glue_fixtures import write_glue_dir, write_task

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUBMISSION_FILES = sorted(f'{name}.tsv' for t in TASKS.values() for name in t.test_files)


@pytest.fixture(scope='module')
def checkpoint(checkpoints):
  return checkpoints('mlm', steps=3)  # a tiny bert pretrained for 3 steps (the session's)


@pytest.fixture(scope='module')
def glue(tmp_path_factory):
  return write_glue_dir(tmp_path_factory.mktemp('glue'))


def _cli(module, *args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')  # the module's fresh cache and the 8 fake devices carry over
  return subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=900)


def _small(task='sst2', **train_overrides):
  config = finetune_glue.get_config(f'task={task}')
  config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 1
  config.data.max_length = 32
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _tsv(path):
  lines = pathlib.Path(path).read_text().splitlines()
  return lines[0].split('\t'), [line.split('\t') for line in lines[1:]]


def test_cli_finetunes_sst2_and_writes_results_and_predictions(checkpoint, glue, tmp_path):
  result = _cli('finetune', '--config', 'configs/finetune_glue.py:task=sst2', '--workdir', str(tmp_path),
                f'--config.init_checkpoint={checkpoint}', f'--config.data.source=glue_dir:{glue}',
                '--config.train.batch_size=8', '--config.train.epochs=2', '--config.train.log_every=1',
                '--config.data.max_length=32', '--config.mesh.data=2', '--config.mesh.fsdp=2', '--config.mesh.tensor=2')
  assert result.returncode == 0, result.stderr[-3000:]
  # pretrained on a (8, 1, 1) mesh, restored onto (2, 2, 2)
  assert 'restored the encoder from' in result.stderr and 'ETA' in result.stderr
  results = json.loads((tmp_path / 'results.json').read_text())
  assert results['task'] == 'sst2' and set(results['dev']) == {'accuracy'}
  assert [e['epoch'] for e in results['epochs']] == [1, 2]
  assert results['dev'] == results['epochs'][results['best_epoch'] - 1]['dev']
  assert results['dev']['accuracy'] == max(e['dev']['accuracy'] for e in results['epochs'])
  header, rows = _tsv(tmp_path / 'predictions' / 'dev.tsv')
  assert header == ['index', 'prediction', 'label'] and len(rows) == 6
  assert np.mean([p == label for _, p, label in rows]) == pytest.approx(results['dev']['accuracy'])
  header, rows = _tsv(tmp_path / 'predictions' / 'SST-2.tsv')
  assert header == ['index', 'prediction'] and [r[0] for r in rows] == ['0', '1', '2', '3']
  assert {p for _, p in rows} <= {'0', '1'}


def test_glue_script_on_two_tasks_writes_their_results_and_a_rerun_reuses_them(checkpoint, glue, tmp_path):
  args = ['--checkpoint', str(checkpoint), '--data', f'glue_dir:{glue}', '--workdir', str(tmp_path),
          '--tasks', 'stsb,mrpc', '--set', 'train.batch_size=8', '--set', 'train.eval_batch_size=16',
          '--set', 'train.epochs=1', '--set', 'data.max_length=32', '--set', 'mrpc:train.epochs=2']
  result = _cli('finetune.glue', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads((tmp_path / 'glue_results.json').read_text())
  assert set(out['tasks']) == {'stsb', 'mrpc'}
  assert (out['checkpoint_step'], out['checkpoint_dir']) == (3, str(checkpoint / 'checkpoints' / '3'))
  mrpc = json.loads((tmp_path / 'mrpc' / 'seed_0' / 'results.json').read_text())
  assert len(mrpc['epochs']) == 2  # the per-task override
  assert out['tasks']['mrpc']['dev/f1']['values'] == pytest.approx([100 * mrpc['dev']['f1']])
  with zipfile.ZipFile(tmp_path / 'glue_submission.zip') as archive:
    assert {'MRPC.tsv', 'STS-B.tsv'} <= set(archive.namelist())
  again = _cli('finetune.glue', *args)
  assert again.returncode == 0 and again.stderr.count('reusing the finished run') == 2


def test_glue_script_runs_every_task_over_seeds_and_zips_a_submission(checkpoint, glue, tmp_path):
  args = ['--checkpoint', str(checkpoint / 'checkpoints'), '--data', f'glue_dir:{glue}', '--workdir', str(tmp_path),
          '--seeds', '2', '--set', 'train.batch_size=8', '--set', 'train.eval_batch_size=16',
          '--set', 'train.epochs=1', '--set', 'data.max_length=32', '--set', 'mrpc:train.epochs=2']
  result = _cli('finetune.glue', *args)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads((tmp_path / 'glue_results.json').read_text())
  assert set(out['tasks']) == {'cola', 'sst2', 'mrpc', 'stsb', 'qqp', 'mnli', 'qnli', 'rte', 'wnli'}
  assert set(out['tasks']['mnli']) == {'dev_matched/accuracy', 'dev_mismatched/accuracy'}
  assert set(out['tasks']['stsb']) == {'dev/pearson', 'dev/spearman'}
  assert set(out['tasks']['mrpc']) == {'dev/f1', 'dev/accuracy'}
  for task, entries in out['tasks'].items():
    for key, entry in entries.items():
      split, metric = key.split('/')
      seeds = [json.loads((tmp_path / task / f'seed_{s}' / 'results.json').read_text()) for s in (0, 1)]
      assert entry['values'] == pytest.approx([100 * r[split][metric] for r in seeds])
      assert entry['mean'] == pytest.approx(np.mean(entry['values']))
  mrpc = json.loads((tmp_path / 'mrpc' / 'seed_0' / 'results.json').read_text())
  assert len(mrpc['epochs']) == 2  # the per-task override
  table = result.stdout
  assert 'mnli (dev_matched)' in table and '83.8' in table and '59.0' in table and 'matthews_corrcoef' in table

  with zipfile.ZipFile(tmp_path / 'glue_submission.zip') as archive:
    assert sorted(archive.namelist()) == SUBMISSION_FILES
    mnli_m = archive.read('MNLI-m.tsv').decode().splitlines()
    ax = archive.read('AX.tsv').decode().splitlines()
    stsb = archive.read('STS-B.tsv').decode().splitlines()
  assert mnli_m[0] == 'index\tprediction' and len(mnli_m) == 5
  assert {line.split('\t')[1] for line in mnli_m[1:] + ax[1:]} <= set(TASKS['mnli'].labels)
  assert all(isinstance(float(line.split('\t')[1]), float) for line in stsb[1:])

  started = time.perf_counter()
  again = _cli('finetune.glue', *args)  # a rerun reuses every finished run
  assert again.returncode == 0 and again.stderr.count('reusing the finished run') == 18
  assert time.perf_counter() - started < 120
  assert json.loads((tmp_path / 'glue_results.json').read_text())['tasks'] == out['tasks']


def test_finetuning_learns_a_learnable_task(checkpoint, tmp_path):
  write_task(tmp_path / 'glue', 'sst2', rows=256)  # positive iff 'red' or 'cat' occurs; 63% negative
  config = _small('sst2', epochs=8, learning_rate=1e-3, batch_size=16)
  config.init_checkpoint, config.data.source = str(checkpoint), f'glue_dir:{tmp_path / "glue"}'
  results = train.run(config, str(tmp_path / 'run'))
  assert results['dev']['accuracy'] >= 0.9, results['epochs']
  assert results['majority_baseline']['dev']['accuracy'] < 0.75
  assert results['epochs'][-1]['train_loss'] < results['epochs'][0]['train_loss']


def test_a_gpt2_step_dir_from_scratch_and_mean_pooling_on_another_mesh_work(checkpoint, checkpoints, glue, tmp_path):
  clm = checkpoints('clm', steps=3)
  runs = [(str(clm / 'checkpoints' / '3'), False, 'auto'), (str(clm), True, 'auto'), (str(checkpoint), False, 'mean')]
  for i, (init_checkpoint, from_scratch, pooling) in enumerate(runs):
    config = _small('rte')
    config.init_checkpoint, config.from_scratch, config.pooling = init_checkpoint, from_scratch, pooling
    config.data.source = f'glue_dir:{glue}'
    if pooling == 'mean':  # the checkpoint was written on a (data=8) mesh: restore it sharded 2 x 2 x 2
      config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
    results = train.run(config, str(tmp_path / f'run{i}'))
    assert results['init_checkpoint'] == (None if from_scratch else str(clm / 'checkpoints' / '3')
                                          if i < 2 else str(checkpoint / 'checkpoints' / '3'))
    assert 0 <= results['dev']['accuracy'] <= 1


def _fails_before_compiling(monkeypatch, config, workdir, match):
  import jax
  monkeypatch.setattr(jax, 'jit', lambda *a, **k: pytest.fail('compiled before rejecting the config'))
  with pytest.raises(ConfigError, match=match):
    train.run(config, str(workdir))


def _edited_checkpoint(checkpoint, tmp_path, **model_fields):
  """A copy of the checkpoint whose stored config claims another architecture."""
  copy = tmp_path / 'edited'
  shutil.copytree(checkpoint / 'checkpoints', copy)
  step_dir = next(p for p in copy.iterdir() if p.name.isdigit())
  meta_path = step_dir / 'meta' / 'metadata'
  meta = json.loads(meta_path.read_text())
  meta['config']['model'].update(model_fields)
  meta_path.write_text(json.dumps(meta))
  return step_dir


@pytest.mark.parametrize('setup,match', [
    (lambda c, ck, g, t: setattr(c, 'task', 'ax'), "task: 'ax' has no training data; fine-tune 'mnli'"),
    (lambda c, ck, g, t: setattr(c, 'init_checkpoint', ''), 'init_checkpoint: required'),
    (lambda c, ck, g, t: setattr(c, 'init_checkpoint', str(t)), 'init_checkpoint: no checkpoint steps under'),
    (lambda c, ck, g, t: setattr(c, 'init_checkpoint', str(t / 'nope')), 'init_checkpoint: .*nope does not exist'),
    (lambda c, ck, g, t: setattr(c.data, 'source', f'glue_dir:{t}'), r'data\.source: .*SST-2/train\.tsv is missing'),
    (lambda c, ck, g, t: setattr(c.data, 'source', 'hub:glue'), "data.source: expected 'glue_dir:PATH'"),
    (lambda c, ck, g, t: setattr(c.data, 'max_length', 512), r"data\.max_length: 512 exceeds the checkpoint's"),
    (lambda c, ck, g, t: setattr(c.train, 'epochs', 0), r'train\.epochs: must be positive'),
    (lambda c, ck, g, t: setattr(c.train, 'max_nonfinite_steps', 0), r'train\.max_nonfinite_steps: must be positive'),
    (lambda c, ck, g, t: setattr(c, 'pooling', 'max'), r"pooling: 'max' is not one of \('auto', 'mean', 'cls'\)"),
    (lambda c, ck, g, t: setattr(c.train, 'schedule', 'step'), r"train\.schedule: 'step' is not one of"),
    (lambda c, ck, g, t: setattr(c.train, 'batch_size', 12), r'train\.batch_size: 12 is not divisible by the '
     r'data-parallel size 8'),
    (lambda c, ck, g, t: setattr(c, 'init_checkpoint', str(_edited_checkpoint(ck, t, vocab_size=300))),
     r'init_checkpoint: its tokenizer has 512 pieces but model\.vocab_size is 300'),
    (lambda c, ck, g, t: (setattr(c, 'task', 'rte'),
                          setattr(c, 'init_checkpoint', str(_edited_checkpoint(ck, t, type_vocab_size=1)))),
     r"init_checkpoint: rte pairs need 2 token types; the checkpoint's model\.type_vocab_size is 1"),
])
def test_bad_config_is_rejected_naming_the_field(monkeypatch, checkpoint, glue, tmp_path, setup, match):
  config = _small()
  config.init_checkpoint, config.data.source = str(checkpoint), f'glue_dir:{glue}'
  setup(config, checkpoint, glue, tmp_path)
  _fails_before_compiling(monkeypatch, config, tmp_path / 'run', match)


def test_a_checkpoint_of_another_architecture_names_the_parameter(checkpoint, glue, tmp_path):
  config = _small()
  config.init_checkpoint = str(_edited_checkpoint(checkpoint, tmp_path, mlp_dim=96))
  config.data.source = f'glue_dir:{glue}'
  with pytest.raises(ConfigError, match=r"checkpoint: parameter encoder\.blocks\.mlp\.wi\.bias has shape "
                                        r"\(2, 128\) in .*, the model wants \(2, 96\)"):
    train.run(config, str(tmp_path / 'run'))


def test_tfds_without_tensorflow_fails_fast_with_one_line(checkpoint, tmp_path):
  if importlib.util.find_spec('tensorflow') is not None:  # an extra; the default install has none
    pytest.skip('TensorFlow is installed here')
  started = time.perf_counter()
  result = _cli('finetune', '--config', 'configs/finetune_glue.py:task=rte', '--workdir', str(tmp_path),
                f'--config.init_checkpoint={checkpoint}', '--config.data.source=tfds:glue/rte',
                '--config.data.max_length=32')
  assert result.returncode == 2 and 'Traceback' not in result.stderr
  assert "error: data.source: 'tfds:glue/...' needs TensorFlow: pip install 'flax-pretrain[tf]'" in result.stderr
  assert time.perf_counter() - started < 60


@pytest.mark.parametrize('args,line', [
    (['--tasks', 'sst2,glue'], "error: --tasks: ['glue'] are not among"),
    (['--tasks', 'ax'], "error: --tasks: ['ax'] are not among"),
    (['--set', 'train.epochz=2'], 'error: --set train.epochz=2: no config field train.epochz'),
    (['--set', 'train.epochs=two'], "error: --set train.epochs=two: 'two' is not a int"),
    (['--set', 'rte:train.epochs=2', '--tasks', 'sst2'], "error: --set rte:train.epochs=2: task 'rte' is not in"),
    (['--seeds', '0'], 'error: --seeds: must be at least 1'),
    (['--set', 'seed=3'], 'error: --set seed=3: seed is set by --seed/--seeds'),
])
def test_glue_script_bad_input_exits_2_before_training(checkpoint, glue, tmp_path, args, line):
  result = _cli('finetune.glue', '--checkpoint', str(checkpoint), '--data', f'glue_dir:{glue}',
                '--workdir', str(tmp_path), *args)
  assert result.returncode == 2, result.stderr[-2000:]
  assert line in result.stderr.strip().splitlines()[-1] and 'Traceback' not in result.stderr
  assert not list(tmp_path.iterdir())


@pytest.mark.parametrize('hidden_size,configured,expected', [
    (768, 0.0, 2e-5),  # bert-base keeps the paper's rate
    (1024, 0.0, 2e-5),  # bert-large too
    (384, 0.0, 8e-5),  # all-MiniLM-L6-v2's width
    (256, 0.0, 1.8e-4),  # configs/pretrain_mlm.py:size=tiny
    (64, 0.0, 1e-3),  # the tests' tiny models: capped
    (256, 3e-5, 3e-5),  # an explicit learning rate wins
    (768, 1e-3, 1e-3),
])
def test_the_default_learning_rate_follows_the_checkpoints_width(hidden_size, configured, expected):
  from finetune import checks, defaults  # pylint: disable=import-outside-toplevel
  config = finetune_glue.get_config('task=sst2')
  assert config.train.learning_rate == 0.0  # auto is the default
  config.train.learning_rate = configured
  settings = checks.optimizer_settings(config.train, total_steps=10, hidden_size=hidden_size)
  assert settings.learning_rate == pytest.approx(expected)
  assert defaults.learning_rate(configured, hidden_size) == pytest.approx(expected)
  assert checks.optimizer_settings(config.train, total_steps=10).learning_rate == pytest.approx(configured or 2e-5)


def test_a_run_uses_the_auto_learning_rate_and_records_it(checkpoint, glue, tmp_path, caplog):
  from finetune import defaults  # pylint: disable=import-outside-toplevel
  config = _small(log_every=1, warmup_fraction=0.0)
  config.init_checkpoint, config.data.source = str(checkpoint), f'glue_dir:{glue}'
  hidden = train.checks.load_pretrained(config).model_cfg.hidden_size
  want = defaults.auto_learning_rate(hidden)
  assert want != 2e-5
  with caplog.at_level('INFO'):
    results = train.run(config, str(tmp_path / 'run'))
  assert results['learning_rate'] == pytest.approx(want)
  assert json.loads((tmp_path / 'run' / 'results.json').read_text())['learning_rate'] == pytest.approx(want)
  logged = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  assert [r['learning_rate'] for r in logged if 'learning_rate' in r][0] == pytest.approx(want)  # no warmup
  assert f'learning rate {want:.3g} (auto: hidden size {hidden})' in caplog.text


def test_a_negative_learning_rate_is_rejected_naming_the_auto_default(monkeypatch, checkpoint, glue, tmp_path):
  config = _small(learning_rate=-2e-5)
  config.init_checkpoint, config.data.source = str(checkpoint), f'glue_dir:{glue}'
  _fails_before_compiling(monkeypatch, config, tmp_path / 'run', r'train\.learning_rate: must be positive, or 0 '
                          r"for the default of the checkpoint's width")
