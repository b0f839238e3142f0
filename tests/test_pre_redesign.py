"""The redesign changed no behaviour a user sees: the code of commit 862d43d (before the architecture fields,
the objective interface and the new layout) wrote tests/data/pre_redesign/, and this code must match it.

- reference.json: the per-step train losses and the eval losses of 30-step tiny MLM (bert) and CLM (gpt2) runs on
  a synthetic corpus (tests/synthetic_corpus.py) with a committed tokenizer, on 8 fake CPU devices; and the logits
  of the two committed checkpoints on fixed tokens.
- mlm/, clm/: 1-layer, 32-wide checkpoints (40 steps) written by that code: their meta names a `variant`, not the
  architecture fields. They must restore to the same logits, fine-tune, convert, resume and start new runs.
"""
import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from configs import finetune_glue
from finetune import train as finetune_train
from pretrain import train
from pretrain.model import load as model_load
from tests.glue_fixtures import write_task
from tests.helpers import tiny_config
from tests.synthetic_corpus import write_synthetic_corpus
from tools import fill_mask, generate
from tools.convert_checkpoint import cli as convert_checkpoint

DATA = pathlib.Path(__file__).parent / 'data' / 'pre_redesign'
REFERENCE = json.loads((DATA / 'reference.json').read_text())
TOKENIZER = DATA / 'tokenizer.model'


@pytest.fixture(scope='module')
def corpus(tmp_path_factory) -> str:
  return write_synthetic_corpus(tmp_path_factory.mktemp('synthetic'))


def _records(workdir, key):
  lines = [json.loads(line) for line in (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()]
  return [r[key] for r in lines if key in r]


def _pinned_config(objective: str, corpus: str):
  """The settings the reference losses were made with (tests/helpers.tiny_config as it stood then)."""
  config = tiny_config(objective)
  config.data.source, config.data.tokenizer = corpus, str(TOKENIZER)
  config.train.update(steps=30, log_every=1, eval_every=15, eval_batches=2, checkpoint_every=1000)
  return config


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_per_step_losses_equal_the_pre_redesign_code(objective, corpus, tmp_path):
  train.run(_pinned_config(objective, corpus), str(tmp_path))
  expected = REFERENCE[objective]
  assert len(_records(tmp_path, 'loss')) == len(expected['loss']) == 30
  np.testing.assert_allclose(_records(tmp_path, 'loss'), expected['loss'], rtol=1e-5, atol=0)
  np.testing.assert_allclose(_records(tmp_path, 'eval_loss'), expected['eval_loss'], rtol=1e-5, atol=0)


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_an_old_checkpoint_restores_to_the_logits_the_old_code_computed(objective):
  loaded = model_load.load_checkpoint(str(DATA / objective))
  assert loaded.model_cfg.causal == (objective == 'clm') and loaded.model_cfg.num_layers == 1
  expected = REFERENCE[f'{objective}_checkpoint']
  logits = np.asarray(loaded.build()(jnp.asarray(expected['tokens'])))
  np.testing.assert_allclose(logits[:, :, :16], expected['logits_first_16'], atol=2e-6, rtol=0)


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_an_old_checkpoint_exports_to_transformers_and_the_tools_run_on_it(objective, tmp_path, capsys):
  assert convert_checkpoint.main(['to-hf', '--checkpoint', str(DATA / objective), '--out', str(tmp_path / 'hf'),
                                  '--verify']) == 0
  assert 'logits match transformers within' in capsys.readouterr().out
  loaded = model_load.load_checkpoint(str(DATA / objective))
  if objective == 'mlm':
    (top,) = fill_mask.fill_mask(loaded, 'Ka [MASK] lo.', top_k=3)
    assert len(top) == 3 and top[0][2] >= top[1][2] >= top[2][2] > 0
  else:
    prompt = [loaded.tokenizer.cls_id] + loaded.tokenizer.encode('Ka')
    assert len(generate.generate(loaded, prompt, max_new_tokens=4)) == 4


def test_an_old_pretraining_workdir_resumes_and_an_old_checkpoint_starts_a_new_run(corpus, tmp_path):
  workdir = tmp_path / 'resumed'
  shutil.copytree(DATA / 'clm', workdir)  # resuming writes into the workdir
  config = tiny_config('clm')
  config.model.update(num_layers=1, hidden_size=32, num_heads=2, mlp_dim=64)
  config.data.source = corpus
  config.train.update(steps=42, log_every=1, eval_every=1000, eval_batches=1, checkpoint_every=1000)
  assert train.run(config, str(workdir))['step'] == 42
  lines = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in lines if 'loss' in r] == [41, 42]  # resumed at the old step 40
  config = tiny_config('mlm')  # the checkpoint's architecture (1 x 32) replaces the config's (2 x 64)
  config.init_checkpoint, config.data.source = str(DATA / 'mlm'), corpus
  config.train.update(steps=2, log_every=1, eval_every=1000, eval_batches=1, checkpoint_every=1000)
  train.run(config, str(tmp_path / 'continued'))
  continued = model_load.load_checkpoint(str(tmp_path / 'continued'))
  assert continued.model_cfg.hidden_size == 32 and continued.model_cfg.num_layers == 1


def test_an_old_checkpoint_fine_tunes(tmp_path):
  write_task(tmp_path / 'glue', 'sst2', rows=16)
  config = finetune_glue.get_config('task=sst2')
  config.init_checkpoint, config.data.source = str(DATA / 'mlm'), f'glue_dir:{tmp_path / "glue"}'
  config.train.update(batch_size=8, eval_batch_size=8, epochs=1)
  config.data.max_length = 32
  results = finetune_train.run(config, str(tmp_path / 'sst2'))
  assert results['init_checkpoint'].endswith('mlm/checkpoints/40') and 0 <= results['dev']['accuracy'] <= 1
  assert model_load.load_checkpoint(results['checkpoint']).classifier['task'] == 'sst2'
