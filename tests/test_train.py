"""End to end through pretrain.train.run and `python -m pretrain`: learning, checkpoints, exact resume, bad input."""
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from pretrain.data.tokenizers import tokenizer_from_meta
from pretrain import train
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import ConfigError
from pretrain.model.config import ModelConfig
from pretrain.data.tokenizer import Tokenizer
from pretrain.model.heads import LanguageModel
from tests.helpers import rejected_before_compiling, tiny_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(kind='mlm', steps=6, **train_overrides):
  config = tiny_config(kind)
  config.train.steps = steps
  config.train.log_every = 1
  config.train.eval_every = 3
  config.train.eval_batches = 2
  config.train.checkpoint_every = 3
  for key, value in train_overrides.items():
    config.train[key] = value
  return config


def _records(workdir, key):
  lines = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return [(r['step'], r[key]) for r in lines if key in r]


def _restored_params(workdir, config):
  """Params-only restore of the newest checkpoint, on one device."""
  model_cfg = ModelConfig.from_config(config.model)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: LanguageModel(model_cfg, nnx.Rngs(0))))
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), nnx.to_pure_dict(abstract))
  return graphdef, checkpoint_lib.restore_params(workdir, target)


@pytest.mark.parametrize('kind', ['mlm', 'llama', 'modernbert'])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, kind):
  config = _config(kind, steps=6)
  full = train.run(config, tmp_path / 'full')
  config.train.stop_at_step = 3  # a job that ends early (time limit), then the same command again
  train.run(config, tmp_path / 'resumed')
  assert checkpoint_lib.resolve(tmp_path / 'resumed') == (tmp_path / 'resumed' / 'checkpoints', 3)
  config.train.stop_at_step = 0
  resumed = train.run(config, tmp_path / 'resumed')
  assert resumed['step'] == full['step'] == 6
  losses_full, losses_resumed = _records(tmp_path / 'full', 'loss'), _records(tmp_path / 'resumed', 'loss')
  assert [s for s, _ in losses_full] == [1, 2, 3, 4, 5, 6]
  assert losses_resumed == losses_full  # step for step, bit for bit
  assert _records(tmp_path / 'resumed', 'eval_loss') == _records(tmp_path / 'full', 'eval_loss')
  _, params_full = _restored_params(tmp_path / 'full', config)
  _, params_resumed = _restored_params(tmp_path / 'resumed', config)
  jax.tree.map(np.testing.assert_array_equal, params_full, params_resumed)


@pytest.mark.parametrize('kind', ['mlm', 'clm', 'llama'])
def test_pretraining_learns_and_leaves_a_checkpoint_that_restores(tmp_path, kind):
  config = _config(kind, steps=40, eval_every=20, checkpoint_every=20, learning_rate=3e-3, warmup_steps=5)
  objective = config.objective
  summary = train.run(config, tmp_path)
  evals = dict(_records(tmp_path, 'eval_loss'))
  vocab = Tokenizer.from_file(tmp_path / 'tokenizer.model').vocab_size
  assert evals[40] < evals[20] < math.log(vocab), evals  # falls, and below a uniform guess
  train_lines = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines() if 'loss' in l]
  assert {'step', 'loss', 'learning_rate', 'tokens_per_sec'} <= set(train_lines[0])
  eval_keys = {'eval_accuracy'} if objective == 'mlm' else {'eval_perplexity'}
  assert eval_keys <= set(summary)
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  # The checkpoint holds the config and the tokenizer, and its params reproduce the final eval loss.
  meta = checkpoint_lib.read_meta(tmp_path)
  assert meta['config']['objective'] == objective
  assert tokenizer_from_meta(meta).to_bytes() == (tmp_path / 'tokenizer.model').read_bytes()
  graphdef, params = _restored_params(tmp_path, config)
  model = nnx.merge(graphdef, params)
  tokens = np.asarray(Tokenizer.from_file(tmp_path / 'tokenizer.model').encode('Return the number of items.'))
  logits = model(tokens[None])
  assert logits.shape == (1, len(tokens), config.model.vocab_size) and np.isfinite(logits).all()


@pytest.mark.parametrize('overrides,match', [
    ({'model.num_heads': 3}, r'model\.num_heads: 3 does not divide model\.hidden_size 64'),
    ({'mesh.data': 3}, r'mesh: data\*fsdp\*tensor = 3\*1\*1 = 3 does not match the 8 available devices'),
    ({'train.batch_size': 12}, r'train\.batch_size: 12 / train\.microbatches 1 = 12 rows per microbatch is not '
                               r'divisible by the data-parallel size 8'),
    ({'train.microbatches': 3}, r'train\.microbatches: 3 does not divide train\.batch_size 8'),
    ({'mlm.sentence_task': 'nxt'}, r'mlm\.sentence_task'),
    ({'data.source': 'hdfs:/corpus'}, r'data\.source'),
    ({'data.source': 'text:/nonexistent/*.txt'}, r'data\.source.*/nonexistent/\*\.txt'),
    ({'data.tokenizer': '/nonexistent/spm.model'}, r'data\.tokenizer.*/nonexistent/spm\.model'),
    ({'data.seq_len': 100}, r'data\.seq_len: 100 exceeds model\.max_position_embeddings 64'),
    ({'model.causal': True}, r"model\.causal: objective 'mlm' predicts masked tokens from both sides"),
    ({'train.schedule': 'exp'}, r'train\.schedule'),
    ({'train.decay_fraction': 0.0}, r'train\.decay_fraction: .* must be in \(0, 1\], got 0\.0'),
    ({'train.decay_shape': 'cosine'}, r"train\.decay_shape: 'cosine' is not one of"),
    ({'mlm.mask_prob': 0.0}, r'mlm\.mask_prob'),
])
def test_bad_config_is_rejected_naming_the_field(monkeypatch, tmp_path, overrides, match):
  config = _config('mlm')
  for dotted, value in overrides.items():
    section, key = dotted.split('.')
    config[section][key] = value
  rejected_before_compiling(monkeypatch, config, tmp_path, match)


def test_empty_corpus_is_rejected(monkeypatch, tmp_path):
  (tmp_path / 'empty.txt').write_text('\n\n   \n')
  config = _config('mlm')
  config.data.source = f'text:{tmp_path}/*.txt'
  rejected_before_compiling(monkeypatch, config, tmp_path / 'run', r'data\.source')


def _cli(*args, timeout=600, **env):
  """`python -m pretrain ARGS`; the session's caches and the 8 fake devices carry over unless `env` replaces them."""
  env = dict(os.environ, JAX_PLATFORMS='cpu', **env)
  return subprocess.run([sys.executable, '-m', 'pretrain', *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


@pytest.mark.parametrize('config_file', ['pretrain_clm', 'pretrain_llama', 'pretrain_modernbert'])
def test_cli_trains_the_clm_config_and_the_same_command_resumes_exactly(tmp_path, config_file):
  """The clm, llama and modernbert (mlm, local layers, the wsd schedule) config files."""
  def args(workdir):
    layers = 2 if config_file == 'pretrain_modernbert' else 1  # modernbert: a global layer, then a local one
    return ['--config', f'configs/{config_file}.py:size=tiny', '--workdir', str(workdir),
            f'--config.model.num_layers={layers}', '--config.model.hidden_size=32', '--config.model.num_heads=2',
            '--config.model.mlp_dim=64', '--config.model.vocab_size=400', '--config.data.seq_len=32',
            '--config.train.batch_size=8', '--config.train.log_every=1', '--config.train.eval_batches=1',
            '--config.train.steps=5', '--config.train.warmup_steps=2',
            *(['--config.model.num_kv_heads=1'] if config_file == 'pretrain_llama' else []),  # multi-query
            *(['--config.model.local_window=8'] if config_file == 'pretrain_modernbert' else [])]
  first = _cli(*args(tmp_path / 'a'), '--config.train.stop_at_step=3')  # a job cut short...
  assert first.returncode == 0, first.stderr[-3000:]
  assert 'step 3/5 | loss' in first.stderr and 'ETA' in first.stderr
  second = _cli(*args(tmp_path / 'a'))  # ...and the same command again, in a new process
  assert second.returncode == 0, second.stderr[-3000:]
  assert 'resumed from' in second.stderr
  straight = _cli(*args(tmp_path / 'b'))
  assert straight.returncode == 0, straight.stderr[-3000:]
  assert [s for s, _ in _records(tmp_path / 'a', 'loss')] == [1, 2, 3, 4, 5]
  assert _records(tmp_path / 'a', 'loss') == _records(tmp_path / 'b', 'loss')
  assert _records(tmp_path / 'a', 'eval_loss') == _records(tmp_path / 'b', 'eval_loss')


# config file -> (its parameter count line, how far below ln 8000 = 8.99 the eval loss must fall by step 200)
COMMANDS = {'pretrain_llama': ('model: llama, 7,244,032 parameters', 3.0),
            'pretrain_modernbert': ('model: modernbert, 4,352,576 parameters', 2.5)}


@pytest.mark.timeout(3600)  # about 6 minutes each on 2 cores
@pytest.mark.parametrize('config_file', sorted(COMMANDS))
def test_the_command_trains_the_tiny_model_on_the_builtin_corpus(tmp_path, config_file):
  """`python -m pretrain --config configs/CONFIG.py:size=tiny` as a user runs it on a CPU (one device, no test
  settings but a shorter schedule: 200 steps): the eval loss falls far below a uniform guess over the 8000 pieces.
  The whole runs measured: llama (400 steps) 5.47 at step 200 and 5.21 at step 400; modernbert (600 steps, MLM at
  30% masking, so the wsd decay is the last 20 of these 200) 5.86, 5.07, 4.66 at steps 200, 400, 600."""
  parameters, margin = COMMANDS[config_file]
  result = _cli('--config', f'configs/{config_file}.py:size=tiny', '--workdir', str(tmp_path),
                '--config.train.steps=200', '--config.train.eval_every=100', timeout=3600, XLA_FLAGS='')
  assert result.returncode == 0, result.stderr[-3000:]
  evals = dict(_records(tmp_path, 'eval_loss'))
  assert sorted(evals) == [100, 200] and evals[200] < evals[100] and evals[200] < math.log(8000) - margin, evals
  assert parameters in result.stderr


@pytest.mark.parametrize('args,line', [
    (['--config', 'configs/pretrain_mlm.py:size=tiny', '--config.model.num_heads=5'],
     'error: model.num_heads: 5 does not divide model.hidden_size 256'),
    (['--config', 'configs/pretrain_mlm.py:size=huge'], "unknown size 'huge'; choose one of tiny, bert-base"),
    (['--config', 'configs/no_such_config.py'], "error: --config: [Errno 2] No such file or directory"),
    (['--config', 'configs/pretrain_mlm.py', '--config.train.stepz=3'],
     'error: --config: no config field stepz: Did you mean "steps" instead of "stepz"?'),
    (['--config', 'configs/pretrain_mlm.py', '--config.train.steps=abc'], 'error: flag --config.train.steps=abc'),
    (['--config', 'configs/pretrain_clm.py', '--config.data.source=ftp:corpus'], 'error: data.source'),
])
def test_cli_bad_input_exits_2_with_one_line(tmp_path, args, line):
  result = _cli(*args, '--workdir', str(tmp_path))
  assert result.returncode == 2, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert line in last and 'Traceback' not in result.stderr


def test_resuming_with_another_model_names_the_field(tmp_path):
  config = _config('clm', steps=1, eval_batches=1)
  train.run(config, tmp_path)
  config.model.hidden_size = 128
  with pytest.raises(ConfigError, match=r'model\.hidden_size: 128 differs from 64 in the checkpoint'):
    train.run(config, tmp_path)


# llama's 2 kv heads split over tensor 2; modernbert's local layer and GeGLU.
@pytest.mark.parametrize('kind', ['clm', 'llama', 'modernbert'])
def test_resume_onto_another_mesh_continues_the_same_run(tmp_path, kind):
  config = _config(kind, steps=4, checkpoint_every=2, eval_every=2)
  train.run(config, tmp_path / 'full')
  config.train.stop_at_step = 2
  train.run(config, tmp_path / 'moved')  # 8-way data parallel
  config.train.stop_at_step = 0
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2  # resumed with fsdp and tensor parallelism
  train.run(config, tmp_path / 'moved')
  full, moved = _records(tmp_path / 'full', 'loss'), _records(tmp_path / 'moved', 'loss')
  assert [s for s, _ in moved] == [1, 2, 3, 4]
  np.testing.assert_allclose([l for _, l in moved], [l for _, l in full], rtol=1e-5)
