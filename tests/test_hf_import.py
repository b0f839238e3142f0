"""tools.convert_checkpoint from-hf against real `transformers` PyTorch models: BERT (WordPiece) and GPT-2 (byte-level
BPE), at initialisation and trained (tests/hf_fixtures.py), then continued pretraining from an import, and bad
Hugging Face directories."""
import json
import pathlib

import numpy as np
import pytest
import transformers

from pretrain import train as pretrain_train
from pretrain.model import load as model_load
from pretrain.runtime.errors import ConfigError
from tests.checkpoint_fixtures import TRAINED
from tests.helpers import tiny_config
from tests.hf_fixtures import HF_CLASSES, TOLERANCE, bert_dir, gpt2_dir, hf_logits, our_logits
from tools.convert_checkpoint import importer


@pytest.mark.parametrize('variant,make', [('bert', bert_dir), ('gpt2', gpt2_dir)])
@pytest.mark.parametrize('steps,safetensors', [(0, True), (TRAINED['steps'], False)])
def test_import_matches_transformers_logits(tmp_path, variant, make, steps, safetensors):
  hf_dir = make(tmp_path / 'hf', steps, safetensors)
  assert (hf_dir / ('model.safetensors' if safetensors else 'pytorch_model.bin')).is_file()
  summary = importer.import_hf(str(hf_dir), str(tmp_path / 'ours'))
  # BertForMaskedLM has no pooler (add_pooling_layer=False): ours is freshly initialised, and the summary says so.
  assert summary['freshly_initialised'] == (['pooler'] if variant == 'bert' else [])
  assert summary['tokenizer'] == 'HfTokenizer'
  model = HF_CLASSES['mlm' if variant == 'bert' else 'clm'].from_pretrained(hf_dir).eval()
  ids = np.random.default_rng(steps).integers(0, model.config.vocab_size, (2, 20))
  kwargs = {'token_type_ids': np.tile((np.arange(20) >= 8).astype(np.int64), (2, 1))} if variant == 'bert' else {}
  diff = np.abs(our_logits(tmp_path / 'ours', ids, **kwargs) - hf_logits(model, ids, **kwargs)).max()
  assert diff <= TOLERANCE, diff

  tokenizer = model_load.load_checkpoint(str(tmp_path / 'ours')).tokenizer
  reference = transformers.AutoTokenizer.from_pretrained(hf_dir) if variant == 'bert' else \
      transformers.GPT2TokenizerFast(str(hf_dir / 'vocab.json'), str(hf_dir / 'merges.txt'))
  text = 'The cat sat on a mat, and the dog ran!'
  assert tokenizer.encode(text) == reference(text, add_special_tokens=False)['input_ids']
  if variant == 'bert':
    assert (tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id, tokenizer.pad_id) == (2, 3, 4, 0)


def test_imported_checkpoint_continues_pretraining_with_its_architecture_and_tokenizer(tmp_path):
  importer.import_hf(str(bert_dir(tmp_path / 'hf', 0)), str(tmp_path / 'imported'))
  config = tiny_config('mlm')  # hidden 64, vocab 512: replaced by the checkpoint's 32 and its vocab
  config.init_checkpoint = str(tmp_path / 'imported')
  config.train.steps, config.train.warmup_steps, config.train.eval_every = 1, 1, 1000
  config.train.eval_batches = 1
  pretrain_train.run(config, str(tmp_path / 'continued'))
  before = model_load.load_checkpoint(str(tmp_path / 'imported'))
  after = model_load.load_checkpoint(str(tmp_path / 'continued'))
  assert after.model_cfg.hidden_size == 32 and after.tokenizer.vocab_size == before.tokenizer.vocab_size
  flat_before, flat_after = model_load.flatten(before.params), model_load.flatten(after.params)
  for name in flat_before:  # one step at learning rate 0 (the first warmup step) changes nothing
    assert np.array_equal(np.asarray(flat_before[name]), np.asarray(flat_after[name])), name


def _edit_config(hf_dir: pathlib.Path, **fields) -> None:
  config = json.loads((hf_dir / 'config.json').read_text())
  config.update(fields)
  (hf_dir / 'config.json').write_text(json.dumps(config))


def _drop_tensor(hf_dir: pathlib.Path, name: str) -> None:
  from safetensors.numpy import load_file, save_file  # pylint: disable=import-outside-toplevel
  tensors = load_file(hf_dir / 'model.safetensors')
  del tensors[name]
  save_file(tensors, hf_dir / 'model.safetensors')


@pytest.mark.parametrize('edit,match', [
    (lambda d: _edit_config(d, model_type='roberta'), r"config\.json: model_type 'roberta' is not supported"),
    (lambda d: _edit_config(d, hidden_act='relu'), r"config\.json: hidden_act 'relu'"),
    (lambda d: _drop_tensor(d, 'bert.encoder.layer.1.output.dense.weight'),
     r"model\.safetensors: tensor 'bert\.encoder\.layer\.1\.output\.dense\.weight' is missing"),
    (lambda d: _edit_config(d, intermediate_size=96),
     r"tensor 'bert\.encoder\.layer\.0\.intermediate\.dense\.weight' has shape \(64, 32\), but config\.json "
     r'implies \(96, 32\)'),
    (lambda d: _edit_config(d, vocab_size=40),
     r"config\.json: vocab_size 40 is smaller than the tokenizer's 76 tokens"),
])
def test_bad_hf_directory_is_one_error_naming_the_field_and_writes_nothing(tmp_path, edit, match):
  hf_dir = bert_dir(tmp_path / 'hf', 0)
  edit(hf_dir)
  with pytest.raises(ConfigError, match=match):
    importer.import_hf(str(hf_dir), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists() and [p.name for p in tmp_path.iterdir()] == ['hf']
