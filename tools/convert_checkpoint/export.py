"""Our checkpoint -> a Hugging Face model directory that `transformers` (PyTorch) loads offline.

  bert LanguageModel           -> BertForMaskedLM (the pooler is stored too, for sequence classification)
  bert with a sentence head    -> BertForPreTraining (mlm.sentence_task nsp or sop: cls.seq_relationship)
  gpt2 LanguageModel           -> GPT2LMHeadModel
  fine-tuned bert (pooling auto) -> BertForSequenceClassification (id2label from the task)

Written: config.json, model.safetensors, tokenizer files. Everything goes to a temporary directory beside
--out that is renamed into place when complete, so a crash never leaves a directory that looks finished.
"""
import json

import numpy as np
from safetensors.numpy import save_file

from pretrain.runtime.errors import require
from pretrain.runtime.files import atomic_directory, check_output_dir
from pretrain.model import load as model_load
from pretrain.model import hf_config
from pretrain.model.heads import resolve_pooling
from tools.convert_checkpoint import mapping, tokenizer_files

PRETRAINING = 'BertForPreTraining'  # MLM head + next-sentence head


def tables(preset: str, classifier: bool) -> list[tuple[list[mapping.Rule], str]]:
  """(rules, HF name prefix) for a model of ours that is `preset`."""
  if preset == 'gpt2':
    return [(mapping.GPT2_ENCODER, 'transformer.')]
  head = mapping.BERT_CLASSIFIER_HEAD if classifier else mapping.BERT_MLM_HEAD + mapping.BERT_SENTENCE_HEAD
  return [(mapping.BERT_ENCODER + mapping.BERT_POOLER, 'bert.'), (head, '')]


def _classifier_config(classifier: dict) -> dict:
  labels = classifier['labels'] or ['score']
  return {'num_labels': classifier['num_labels'], 'id2label': dict(enumerate(labels)),
          'label2id': {label: i for i, label in enumerate(labels)}, 'finetuning_task': classifier['task'],
          'problem_type': 'regression' if classifier['is_regression'] else 'single_label_classification'}


def hf_tensors(loaded: model_load.LoadedCheckpoint) -> tuple[dict[str, np.ndarray], str]:
  """The state dict and the HF architecture name of a loaded checkpoint."""
  cfg, classifier = loaded.model_cfg, loaded.classifier
  preset = hf_config.hf_preset(cfg)
  if classifier is not None:
    require(preset == 'bert' and resolve_pooling(cfg, classifier['pooling']) == 'pooler',
            f"--checkpoint: a fine-tuned {preset} model with pooling '{classifier['pooling']}' has no "
            'Hugging Face class; only bert with pooling auto exports (as BertForSequenceClassification)')
  architecture = (hf_config.SEQUENCE_CLASSIFICATION if classifier else hf_config.MASKED_LM)[preset]
  architecture = PRETRAINING if cfg.sentence_head else architecture
  flat = {k: np.asarray(v) for k, v in model_load.flatten(loaded.params).items()}
  tensors = {}
  for rules, prefix in tables(preset, classifier is not None):
    tensors.update(mapping.to_hf(rules, flat, cfg.num_layers, prefix))
  used = {p for rules, _ in tables(preset, classifier is not None) for r in rules for p in r.ours}
  leftover = sorted(set(flat) - used)
  require(not leftover, f'--checkpoint: parameters {leftover} have no Hugging Face counterpart')
  return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, architecture


def export(checkpoint: str, out: str) -> dict:
  """Writes the HF directory `out`; returns a summary (architecture, tensors, parameters)."""
  check_output_dir(out)
  loaded = model_load.load_checkpoint(checkpoint)
  tensors, architecture = hf_tensors(loaded)
  tok = loaded.tokenizer
  require(tok.vocab_size <= loaded.model_cfg.vocab_size,
          f'--checkpoint: its tokenizer has {tok.vocab_size} tokens, more than model.vocab_size '
          f'{loaded.model_cfg.vocab_size}')
  config_json = hf_config.to_hf_config(loaded.model_cfg, architecture, tok.pad_id, tok.cls_id, tok.sep_id)
  if loaded.classifier:
    config_json.update(_classifier_config(loaded.classifier))
  with atomic_directory(out) as tmp:
    save_file(tensors, str(tmp / 'model.safetensors'), metadata={'format': 'pt'})
    (tmp / 'config.json').write_text(json.dumps(config_json, indent=2) + '\n')
    tokenizer_files.write_tokenizer_files(tok, tmp, hf_config.hf_preset(loaded.model_cfg),
                                          loaded.model_cfg.max_position_embeddings)
  return {'architecture': architecture, 'tensors': len(tensors),
          'parameters': int(sum(v.size for v in tensors.values())), 'from': loaded.step_dir}

