"""Our checkpoint -> a Hugging Face model directory that `transformers` (PyTorch) loads offline.

  bert LanguageModel           -> BertForMaskedLM (the pooler is stored too, for sequence classification)
  bert with a sentence head    -> BertForPreTraining (mlm.sentence_task nsp or sop: cls.seq_relationship)
  gpt2 LanguageModel           -> GPT2LMHeadModel
  llama LanguageModel          -> LlamaForCausalLM (untied: lm_head.weight; tied: tie_word_embeddings true)
  fine-tuned bert (pooling auto) -> BertForSequenceClassification (id2label from the task)
  fine-tuned llama (pooling auto: the last real token) -> LlamaForSequenceClassification
  modernbert LanguageModel     -> ModernBertForMaskedLM (classifier_pooling mean, what pooling auto gives)
  fine-tuned modernbert (pooling auto/mean or cls) -> ModernBertForSequenceClassification (classifier_pooling)
  fine-tuned, outputs 'tokens' -> BertForTokenClassification (no pooler: HF's has add_pooling_layer=False),
                                  ModernBertForTokenClassification, LlamaForTokenClassification,
                                  GPT2ForTokenClassification (id2label from the labels)
  fine-tuned, outputs 'spans'  -> BertForQuestionAnswering, ModernBertForQuestionAnswering,
                                  LlamaForQuestionAnswering, GPT2ForQuestionAnswering (start and end logits)

Written: config.json, model.safetensors (or, past --max_shard_size, model-0000i-of-0000N.safetensors and
model.safetensors.index.json, as transformers shards), tokenizer files. Everything goes to a temporary directory
beside --out that is renamed into place when complete, so a crash never leaves a directory that looks finished.
"""
import json
import pathlib
import re

import numpy as np
from safetensors.numpy import save_file

from pretrain.runtime.errors import require
from pretrain.runtime.files import atomic_directory, check_output_dir
from pretrain.model import load as model_load
from pretrain.model import hf_config
from pretrain.model.heads import resolve_pooling
from tools.convert_checkpoint import mapping, tokenizer_files

PRETRAINING = 'BertForPreTraining'  # MLM head + next-sentence head
DEFAULT_MAX_SHARD_SIZE = '5GB'  # transformers' save_pretrained default
# Size units as transformers reads them: decimal (GB = 10**9 bytes) and binary (GiB = 2**30 bytes).
_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12, 'KIB': 2**10, 'MIB': 2**20,
          'GIB': 2**30, 'TIB': 2**40}


# bert's pooler, which HF's per-token classes lack (BertModel(add_pooling_layer=False)): not exported.
UNUSED_BY_PER_TOKEN_HEADS = 'encoder/pooler/'


def tables(preset: str, outputs: str | None) -> list[tuple[list[mapping.Rule], str]]:
  """(rules, HF name prefix) for a model of ours that is `preset`; outputs: the fine-tuned head's (heads.OUTPUTS),
  None for a language model."""
  if preset == 'gpt2':
    head = {'tokens': mapping.GPT2_TOKEN_HEAD, 'spans': mapping.GPT2_QA_HEAD}.get(outputs, [])
    return [(mapping.GPT2_ENCODER, 'transformer.'), (head, '')]
  if preset == 'llama':
    head = {None: mapping.LLAMA_LM_HEAD, 'sequence': mapping.LLAMA_CLASSIFIER_HEAD, 'tokens': mapping.LLAMA_TOKEN_HEAD,
            'spans': mapping.LLAMA_QA_HEAD}[outputs]
    # LlamaForQuestionAnswering keeps the older name of its encoder, 'transformer'.
    return [(mapping.LLAMA_ENCODER, 'transformer.' if outputs == 'spans' else 'model.'), (head, '')]
  if preset == 'modernbert':
    return [(mapping.MODERNBERT_ENCODER, 'model.'),
            (mapping.MODERNBERT_MLM_HEAD if outputs is None else mapping.MODERNBERT_CLASSIFIER_HEAD, '')]
  head = {None: mapping.BERT_MLM_HEAD + mapping.BERT_SENTENCE_HEAD, 'sequence': mapping.BERT_CLASSIFIER_HEAD,
          'tokens': mapping.BERT_CLASSIFIER_HEAD, 'spans': mapping.BERT_QA_HEAD}[outputs]
  pooler = mapping.BERT_POOLER if outputs in (None, 'sequence') else []
  return [(mapping.BERT_ENCODER + pooler, 'bert.'), (head, '')]


def _classifier_config(classifier: dict) -> dict:
  """config.json's head fields: labels and task; a QA head has 2 outputs (start, end) and no problem_type."""
  outputs = model_load.classifier_outputs(classifier)
  labels = classifier['labels'] or ['score']
  if outputs == 'spans':
    labels = labels if len(labels) == 2 else ['start', 'end']
  fields = {'num_labels': len(labels) if outputs == 'spans' else classifier['num_labels'],
            'id2label': dict(enumerate(labels)), 'label2id': {label: i for i, label in enumerate(labels)},
            'finetuning_task': classifier['task']}
  if outputs != 'spans':
    fields['problem_type'] = 'regression' if classifier['is_regression'] else 'single_label_classification'
  return fields


def last_token_pad_id(tok) -> int:
  """config.json's pad_token_id for a classifier on the last real token (LlamaForSequenceClassification).

  transformers pools the rightmost token that is not pad_token_id; ours pools the last real token, the EOS (sep)
  every fine-tuning example ends with. A tokenizer without a pad token pads with EOS (HfTokenizer's fallback,
  e.g. Llama 3's), with which transformers would pool the token before it: then the BOS, only ever the first
  token, is the padding id instead (the tokenizer files say so too, so HF tokenizers pad with it)."""
  if tok.pad_id != tok.sep_id:
    return tok.pad_id
  require(tok.cls_id != tok.sep_id, f'--checkpoint: the tokenizer pads with its EOS token (id {tok.sep_id}), '
          'which is also its BOS: no id is left that tells transformers where the real tokens end')
  return tok.cls_id


def hf_tensors(loaded: model_load.LoadedCheckpoint) -> tuple[dict[str, np.ndarray], str]:
  """The state dict and the HF architecture name of a loaded checkpoint."""
  cfg, classifier = loaded.model_cfg, loaded.classifier
  preset = hf_config.hf_preset(cfg)
  outputs = model_load.classifier_outputs(classifier)
  if outputs == 'sequence':  # per-token heads pool nothing
    require(resolve_pooling(cfg, classifier['pooling']) in hf_config.CLASSIFIER_POOLING.get(preset, ()),
            f"--checkpoint: a fine-tuned {preset} model with pooling '{classifier['pooling']}' has no Hugging Face "
            'class; only bert and llama with pooling auto, and modernbert with auto, mean or cls export (as '
            'BertForSequenceClassification, LlamaForSequenceClassification, ModernBertForSequenceClassification)')
  architecture = (hf_config.FINETUNED[outputs] if classifier else hf_config.MASKED_LM)[preset]
  architecture = PRETRAINING if cfg.sentence_head else architecture
  flat = {k: np.asarray(v) for k, v in model_load.flatten(loaded.params).items()}
  tensors = {}
  for rules, prefix in tables(preset, outputs):
    tensors.update(mapping.to_hf(rules, flat, cfg.num_layers, prefix))
  used = {p for rules, _ in tables(preset, outputs) for r in rules for p in r.ours}
  unused = UNUSED_BY_PER_TOKEN_HEADS if outputs in ('tokens', 'spans') else None
  leftover = sorted(p for p in set(flat) - used if not (unused and p.startswith(unused)))
  require(not leftover, f'--checkpoint: parameters {leftover} have no Hugging Face counterpart')
  return {k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, architecture


def parse_size(text: str, field: str = '--max_shard_size') -> int:
  """'5GB', '500MB', '2GiB' or a number of bytes -> bytes (> 0)."""
  match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*', str(text))
  unit = match and _UNITS.get(match.group(2).upper())
  require(unit is not None and float(match.group(1)) * unit >= 1,
          f'{field}: {text!r} is not a size like 5GB, 500MB, 2GiB or a number of bytes')
  return int(float(match.group(1)) * unit)


def shards(tensors: dict[str, np.ndarray], max_bytes: int) -> list[dict[str, np.ndarray]]:
  """Consecutive groups of tensors of at most max_bytes each (a larger tensor alone), in order."""
  groups, size = [{}], 0
  for name, x in tensors.items():
    if groups[-1] and size + x.nbytes > max_bytes:
      groups, size = groups + [{}], 0
    groups[-1][name] = x
    size += x.nbytes
  return groups


def write_safetensors(tensors: dict[str, np.ndarray], out: pathlib.Path, max_bytes: int) -> list[str]:
  """model.safetensors, or shards and model.safetensors.index.json; returns the weight files' names."""
  groups = shards(tensors, max_bytes)
  if len(groups) == 1:
    save_file(tensors, str(out / 'model.safetensors'), metadata={'format': 'pt'})
    return ['model.safetensors']
  names = [f'model-{i + 1:05d}-of-{len(groups):05d}.safetensors' for i in range(len(groups))]
  for name, group in zip(names, groups):
    save_file(group, str(out / name), metadata={'format': 'pt'})
  index = {'metadata': {'total_size': int(sum(x.nbytes for x in tensors.values()))},
           'weight_map': {k: name for name, group in zip(names, groups) for k in sorted(group)}}
  (out / 'model.safetensors.index.json').write_text(json.dumps(index, indent=2, sort_keys=True) + '\n')
  return names


def export(checkpoint: str, out: str, max_shard_size: str = DEFAULT_MAX_SHARD_SIZE) -> dict:
  """Writes the HF directory `out`; returns a summary (architecture, tensors, parameters, files)."""
  max_bytes = parse_size(max_shard_size)
  check_output_dir(out)
  loaded = model_load.load_checkpoint(checkpoint)
  tensors, architecture = hf_tensors(loaded)
  tok, cfg = loaded.tokenizer, loaded.model_cfg
  require(tok.vocab_size <= cfg.vocab_size,
          f'--checkpoint: its tokenizer has {tok.vocab_size} tokens, more than model.vocab_size {cfg.vocab_size}')
  preset = hf_config.hf_preset(cfg)
  sequence = model_load.classifier_outputs(loaded.classifier) == 'sequence'
  pad_id = last_token_pad_id(tok) if sequence and preset == 'llama' else tok.pad_id
  pooling = resolve_pooling(cfg, loaded.classifier['pooling'] if sequence else 'auto')
  config_json = hf_config.to_hf_config(cfg, architecture, pad_id, tok.cls_id, tok.sep_id, pooling=pooling)
  if loaded.classifier:
    config_json.update(_classifier_config(loaded.classifier))
  with atomic_directory(out) as tmp:
    files = write_safetensors(tensors, tmp, max_bytes)
    (tmp / 'config.json').write_text(json.dumps(config_json, indent=2) + '\n')
    tokenizer_files.write_tokenizer_files(tok, tmp, preset, cfg.max_position_embeddings, pad_id)
  return {'architecture': architecture, 'tensors': len(tensors), 'files': files,
          'parameters': int(sum(v.size for v in tensors.values())), 'from': loaded.step_dir}
