"""Per-token heads (Classifier outputs 'tokens': token classification / NER; 'spans': extractive QA, start and end
logits) and their Hugging Face export: BertFor/ModernBertFor/LlamaFor/GPT2For- TokenClassification and
QuestionAnswering, compared with transformers on the real tokens of padded batches; old metas without 'outputs'.

The fine-tuned checkpoints are built, not trained: the encoder (and modernbert's MLM-head transform, as fine-tuning
restores it into pooled_transform) from a trained pretraining checkpoint (checkpoint_fixtures.TRAINED), the head
random normal with std 0.5 (weights and bias), so logits reach several units. Measured max |logit difference|
(float32) in each test's docstring.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from pretrain.model import load as model_load
from pretrain.model.heads import OUTPUTS, Classifier
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import ConfigError
from tests.hf_fixtures import TEXTS, TOLERANCE, padded
from tools.convert_checkpoint import cli as convert_checkpoint
from tools.convert_checkpoint import export as export_lib

NER_LABELS = ['O', 'B-PER', 'I-PER', 'B-ORG', 'I-ORG', 'B-LOC', 'I-LOC', 'B-MISC', 'I-MISC']
PRESETS = {'mlm': 'Bert', 'modernbert': 'ModernBert', 'llama': 'Llama', 'clm': 'GPT2'}
HF_CLASS = {'tokens': 'ForTokenClassification', 'spans': 'ForQuestionAnswering'}
AUTO = {'tokens': transformers.AutoModelForTokenClassification, 'spans': transformers.AutoModelForQuestionAnswering}


def classifier_meta(outputs: str | None, labels: list[str]) -> dict:
  meta = {'task': 'ner' if outputs == 'tokens' else 'squad' if outputs == 'spans' else 'sst2',
          'num_labels': len(labels), 'labels': labels, 'is_regression': False, 'pooling': 'auto'}
  return meta if outputs is None else {**meta, 'outputs': outputs}


def build_finetuned(pretrained, workdir, outputs: str | None, labels: list[str], seed: int = 0):
  """A fine-tuned checkpoint as finetune writes one: the pretrained encoder (and modernbert's MLM-head transform in
  pooled_transform), a trained-looking head; its meta's classifier without 'outputs' when outputs is None."""
  loaded = model_load.load_checkpoint(str(pretrained))
  cfg = dataclasses.replace(loaded.model_cfg, sentence_head=False)
  classifier = classifier_meta(outputs, labels)
  model = model_load.model_builder(cfg, classifier)(seed)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  params['encoder'] = loaded.params['encoder']
  if 'pooled_transform' in params:
    params['pooled_transform'] = loaded.params['mlm_head']
  keys = jax.random.split(jax.random.key(seed), len(params['head']))
  params['head'] = {name: 0.5 * jax.random.normal(key, params['head'][name].shape, jnp.float32)
                    for key, name in zip(keys, sorted(params['head']))}
  config = {**loaded.meta['config'], 'model': dataclasses.asdict(cfg)}
  meta = checkpoint_lib.make_meta(config, loaded.tokenizer, classifier=classifier)
  checkpoint_lib.save_params(workdir, 1, params, meta)
  return workdir


@pytest.fixture(scope='module')
def finetuned(checkpoints, tmp_path_factory):
  """(kind, outputs) -> a fine-tuned workdir on checkpoints.trained(kind), made once per module."""
  made = {}

  def make(kind: str, outputs: str):
    if (kind, outputs) not in made:
      labels = NER_LABELS if outputs == 'tokens' else ['start', 'end']
      made[kind, outputs] = build_finetuned(checkpoints.trained(kind),
                                            tmp_path_factory.mktemp(f'{kind}_{outputs}'), outputs, labels)
    return made[kind, outputs]
  return make


def rows_of(loaded) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids, token types, real) of a right-padded batch of [CLS] question [SEP] context [SEP] rows (types 0 then 1
  where the model has token types), as question answering and NER fine-tuning feed them."""
  tok = loaded.tokenizer
  pairs = [('who sat?', 'a red cat sat on the mat'), ('the dog', TEXTS[2]), (TEXTS[0], TEXTS[1])]
  rows, types = [], []
  for a, b in pairs:
    a_ids, b_ids = tok.encode(a), tok.encode(b)
    rows.append([tok.cls_id, *a_ids, tok.sep_id, *b_ids, tok.sep_id])
    types.append([0] * (len(a_ids) + 2) + [1] * (len(b_ids) + 1))
  ids, real = padded(rows, tok.pad_id)
  types = padded(types, 0)[0] if loaded.model_cfg.type_vocab_size > 1 else np.zeros_like(ids)
  return ids, types, real


def hf_outputs(model, ids, types, real, outputs: str) -> np.ndarray:
  """transformers' logits [batch, length, labels], or start and end logits stacked as [batch, length, 2]."""
  kwargs = {'attention_mask': torch.tensor(real)}
  if model.config.model_type == 'bert':  # gpt2 would add type embeddings (its wte) for any token_type_ids given
    kwargs['token_type_ids'] = torch.tensor(types)
  with torch.no_grad():
    out = model(torch.tensor(ids), **kwargs)
  if outputs == 'spans':
    return torch.stack([out.start_logits, out.end_logits], dim=-1).numpy()
  return out.logits.numpy()


def check_export(checkpoint, tmp_path, capsys, kind: str, outputs: str) -> float:
  """Exports with --verify through the CLI, loads with transformers and returns max |ours - theirs| on real tokens."""
  args = ['to-hf', '--checkpoint', str(checkpoint), '--out', str(tmp_path / 'hf'), '--verify']
  assert convert_checkpoint.main(args) == 0
  architecture = PRESETS[kind] + HF_CLASS[outputs]
  what = 'start/end logits' if outputs == 'spans' else 'logits'
  assert f'verified: {architecture} {what} on real tokens match transformers within' in capsys.readouterr().out
  model = AUTO[outputs].from_pretrained(tmp_path / 'hf').eval()
  assert type(model) is getattr(transformers, architecture)
  if outputs == 'tokens':
    assert model.config.id2label == dict(enumerate(NER_LABELS)) and model.config.num_labels == 9
    assert model.config.label2id == {label: i for i, label in enumerate(NER_LABELS)}
  else:
    assert model.config.num_labels == 2
  loaded = model_load.load_checkpoint(str(checkpoint))
  assert model_load.classifier_outputs(loaded.classifier) == outputs
  ids, types, real = rows_of(loaded)
  ours = np.asarray(loaded.build()(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(real)))
  theirs = hf_outputs(model, ids, types, real, outputs)
  assert ours.shape == theirs.shape == (*ids.shape, 9 if outputs == 'tokens' else 2)
  assert np.abs(ours[real == 1]).max() > 1.0  # a head that says something: logits of several units
  return float(np.abs(ours - theirs)[real == 1].max())


@pytest.mark.parametrize('outputs', ['tokens', 'spans'])
@pytest.mark.parametrize('kind', ['mlm', 'modernbert'])
def test_encoder_token_heads_export_and_match_transformers(finetuned, tmp_path, capsys, kind, outputs):
  """Measured max |logit difference| on the real tokens of a padded batch (3 rows, up to 61 tokens; logits up to
  3.4 to 7.8): bert tokens 2.9e-6, spans 2.4e-6; modernbert tokens 2.4e-6, spans 1.9e-6 (--verify's random tokens:
  2.1e-6 to 2.4e-6)."""
  diff = check_export(finetuned(kind, outputs), tmp_path, capsys, kind, outputs)
  assert diff <= TOLERANCE, diff
  if kind == 'mlm':  # HF's per-token bert classes have no pooler: ours is left out, not reported as unknown
    tensors = export_lib.hf_tensors(model_load.load_checkpoint(str(finetuned(kind, outputs))))[0]
    assert not any('pooler' in name for name in tensors)
    assert ('bert.embeddings.word_embeddings.weight' in tensors and
            ('classifier.weight' if outputs == 'tokens' else 'qa_outputs.weight') in tensors)


@pytest.mark.parametrize('outputs', ['tokens', 'spans'])
@pytest.mark.parametrize('kind', ['llama', 'clm'])
def test_decoder_token_heads_export_and_match_transformers(finetuned, tmp_path, capsys, kind, outputs):
  """LlamaForQuestionAnswering's encoder is 'transformer.' (not 'model.'). Measured as above (logits up to 4 to
  8.9): llama tokens 3.8e-6, spans 1.9e-6; gpt2 tokens 3.8e-6, spans 1.9e-6 (--verify: 1.7e-6 to 3.8e-6)."""
  diff = check_export(finetuned(kind, outputs), tmp_path, capsys, kind, outputs)
  assert diff <= TOLERANCE, diff


def test_classifier_outputs_shapes_and_checks():
  from tests.helpers import tiny_config  # pylint: disable=import-outside-toplevel
  from pretrain.model.config import ModelConfig  # pylint: disable=import-outside-toplevel
  cfg = ModelConfig.from_config(dict(tiny_config('mlm').model))
  ids = jnp.ones((2, 8), jnp.int32)
  shapes = {outputs: Classifier(cfg, 2, nnx.Rngs(0), outputs=outputs)(ids, jnp.zeros_like(ids), ids).shape
            for outputs in OUTPUTS}
  assert shapes == {'sequence': (2, 2), 'tokens': (2, 8, 2), 'spans': (2, 8, 2)}
  with pytest.raises(ConfigError, match=r"^num_outputs: a 'spans' head has 2 outputs"):
    Classifier(cfg, 3, nnx.Rngs(0), outputs='spans')
  with pytest.raises(ConfigError, match=r"^outputs: 'words' is not one of sequence, tokens, spans"):
    Classifier(cfg, 3, nnx.Rngs(0), outputs='words')


def test_a_meta_without_outputs_loads_as_a_sequence_classifier(checkpoints, tmp_path):
  """Checkpoints written before per-token heads: their classifier meta has no 'outputs'."""
  workdir = build_finetuned(checkpoints.trained('mlm'), tmp_path / 'old', None, ['0', '1'])
  loaded = model_load.load_checkpoint(str(workdir))
  assert 'outputs' not in loaded.classifier and model_load.classifier_outputs(loaded.classifier) == 'sequence'
  model = loaded.build()
  assert model.outputs == 'sequence'
  ids = jnp.ones((3, 8), jnp.int32)
  assert model(ids, jnp.zeros_like(ids), ids).shape == (3, 2)
  assert export_lib.hf_tensors(loaded)[1] == 'BertForSequenceClassification'
