"""A Hugging Face BERT, GPT-2, Llama or ModernBERT directory -> a params-only checkpoint of ours (OUT/checkpoints/0).

The checkpoint holds a LanguageModel, so `finetune` (init_checkpoint=OUT) and `pretrain` (continued
pretraining, init_checkpoint=OUT) start from it. Weights: model.safetensors (or its sharded index) or
pytorch_model.bin; any float dtype, stored as float32. Parts the directory lacks (the MLM head of a
sentence-embedding BertModel, its pooler, the untied LM head of a bare LlamaModel) are freshly initialised, and
the summary says so. The tokenizer comes along: WordPiece or byte-level BPE through `tokenizers`, or SentencePiece
(`tokenizer.model`: ours, or a Llama's).
"""
import dataclasses
import json
import logging
import pathlib

import jax
import numpy as np
from flax import nnx

from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import ConfigError, require
from pretrain.runtime.files import atomic_directory, check_output_dir
from pretrain.model import load as model_load
from pretrain.model import hf_config
from tools.convert_checkpoint import mapping, tokenizer_files

log = logging.getLogger(__name__)


def read_tensors(hf_dir: pathlib.Path) -> tuple[dict[str, np.ndarray], str]:
  """All tensors of the directory as float32 numpy arrays, and the file(s) they came from."""
  index = hf_dir / 'model.safetensors.index.json'
  if (hf_dir / 'model.safetensors').is_file() or index.is_file():
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    files = ([hf_dir / 'model.safetensors'] if not index.is_file() else
             [hf_dir / f for f in sorted(set(json.loads(index.read_text())['weight_map'].values()))])
    tensors = {}
    for f in files:
      with safe_open(str(f), framework='flax') as reader:  # jax arrays: bfloat16 files work too
        tensors.update({k: np.asarray(reader.get_tensor(k), np.float32) for k in reader.keys()})
    return tensors, str(files[0] if len(files) == 1 else index)
  if (hf_dir / 'pytorch_model.bin').is_file():
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise ConfigError(f'--hf: reading {hf_dir / "pytorch_model.bin"} needs torch (the `hf` extra)') from None
    state = torch.load(hf_dir / 'pytorch_model.bin', map_location='cpu', weights_only=True)
    return {k: v.float().numpy() for k, v in state.items()}, str(hf_dir / 'pytorch_model.bin')
  raise ConfigError(f'--hf: {hf_dir} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin')


# The input embedding a tied decoder (mapping.TIED_DECODERS) must equal, per preset (without the model prefix).
EMBEDDINGS = {'bert': 'bert.embeddings.word_embeddings.weight', 'gpt2': 'transformer.wte.weight',
              'llama': 'model.embed_tokens.weight', 'modernbert': 'model.embeddings.tok_embeddings.weight'}


def _prefix(preset: str, tensors: dict) -> str:
  """'bert.', 'transformer.' or 'model.' when the file holds a model with a head, '' for the bare model."""
  return EMBEDDINGS[preset].split('.', 1)[0] + '.' if EMBEDDINGS[preset] in tensors else ''


def _groups(cfg, preset: str, tensors: dict) -> list[tuple[str, list[mapping.Rule], str, bool]]:
  """(name, rules, HF prefix, required) in the order they are read."""
  prefix = _prefix(preset, tensors)
  if preset == 'gpt2':
    return [('encoder', mapping.GPT2_ENCODER, prefix, True)]
  if preset == 'llama':
    return [('encoder', mapping.LLAMA_ENCODER, prefix, True)] + (
        [] if cfg.tie_embeddings else [('LM head', mapping.LLAMA_LM_HEAD, '', False)])
  if preset == 'modernbert':
    return [('encoder', mapping.MODERNBERT_ENCODER, prefix, True), ('MLM head', mapping.MODERNBERT_MLM_HEAD, '', False)]
  return [('encoder', mapping.BERT_ENCODER, prefix, True), ('pooler', mapping.BERT_POOLER, prefix, False),
          ('MLM head', mapping.BERT_MLM_HEAD, '', False)]


def _check_tied(tensors: dict, cfg, preset: str, where: str) -> None:
  """A stored decoder of a tied model must be the input embedding (an untied llama's lm_head is its own)."""
  if not cfg.tie_embeddings:
    return
  embedding = EMBEDDINGS[preset] if _prefix(preset, tensors) else EMBEDDINGS[preset].split('.', 1)[1]
  hint = 'config.json ties them (tie_word_embeddings true)' if preset == 'llama' else \
      'untied output embeddings are not supported (our heads are tied to the input embedding)'
  for decoder in mapping.TIED_DECODERS:
    if decoder in tensors and embedding in tensors and not np.array_equal(tensors[decoder], tensors[embedding]):
      raise ConfigError(f'{where}: tensor {decoder} differs from {embedding}; {hint}')


def convert(hf_dir: pathlib.Path, seed: int = 0) -> tuple[dict, object, dict, list[str]]:
  """-> (our params, tokenizer, our ModelConfig, names of freshly initialised parts)."""
  config_path = hf_dir / 'config.json'
  require(config_path.is_file(), f'--hf: {config_path} does not exist')
  try:
    config_json = json.loads(config_path.read_text())
  except json.JSONDecodeError as e:
    raise ConfigError(f'{config_path}: not JSON ({e})') from None
  cfg = hf_config.from_hf_config(config_json, str(config_path))
  preset = hf_config.hf_preset(cfg)
  tokenizer = tokenizer_files.read_tokenizer(hf_dir, preset, config_json)
  require(tokenizer.vocab_size <= cfg.vocab_size,
          f'{config_path}: vocab_size {cfg.vocab_size} is smaller than the tokenizer\'s {tokenizer.vocab_size} tokens')
  tensors, where = read_tensors(hf_dir)
  for alias, name in mapping.BIAS_ALIASES.items():
    if alias in tensors and name not in tensors:
      tensors[name] = tensors[alias]
  _check_tied(tensors, cfg, preset, where)

  def get_tensor(name: str, expected: tuple[int, ...]) -> np.ndarray:
    if name not in tensors:
      raise ConfigError(f'{where}: tensor {name!r} is missing (a {preset} model with {cfg.num_layers} layers '
                        'needs it)')
    require(tuple(tensors[name].shape) == tuple(expected), f'{where}: tensor {name!r} has shape '
            f'{tuple(tensors[name].shape)}, but {config_path.name} implies {tuple(expected)}')
    used.add(name)
    return tensors[name]

  build = model_load.model_builder(cfg, None)
  shapes = {k: tuple(v.shape) for k, v in model_load.flatten(
      nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build(seed)), nnx.Param))).items()}
  used: set[str] = set(mapping.BIAS_ALIASES) | (set(mapping.TIED_DECODERS) if cfg.tie_embeddings else set())
  flat, fresh = {}, []
  for name, rules, prefix, required in _groups(cfg, preset, tensors):
    if not required and prefix + rules[0].hf not in tensors:
      fresh.append(name)
      continue
    flat.update(mapping.to_ours(rules, get_tensor, shapes, cfg.num_layers, prefix))
  if fresh:
    initial = model_load.flatten(nnx.to_pure_dict(nnx.state(build(seed), nnx.Param)))
    flat.update({k: np.asarray(v) for k, v in initial.items() if k not in flat})
  ignored = sorted(k for k in set(tensors) - used if not k.endswith(mapping.IGNORED_SUFFIXES))
  if ignored:
    log.warning('ignored %d tensors with no counterpart in our model: %s', len(ignored), ', '.join(ignored[:8]))
  return model_load.unflatten(flat), tokenizer, cfg, fresh


def import_hf(hf: str, out: str, seed: int = 0) -> dict:
  """Writes OUT/checkpoints/0 (via a temporary directory renamed into place); returns a summary."""
  hf_dir = pathlib.Path(hf).absolute()
  require(hf_dir.is_dir(), f'--hf: {hf_dir} is not a directory')
  check_output_dir(out)
  params, tokenizer, cfg, fresh = convert(hf_dir, seed)
  meta = checkpoint_lib.make_meta({'model': dataclasses.asdict(cfg)}, tokenizer,
                                  imported_from={'path': str(hf_dir), 'freshly_initialised': fresh})
  with atomic_directory(out) as tmp:
    step_dir = checkpoint_lib.save_params(tmp, 0, jax.device_put(params, jax.local_devices()[0]), meta)
  checkpoint = pathlib.Path(out).absolute() / step_dir.relative_to(tmp)
  return {'preset': hf_config.hf_preset(cfg), 'checkpoint': str(checkpoint),
          'parameters': int(sum(np.size(x) for x in jax.tree.leaves(params))), 'freshly_initialised': fresh,
          'tokenizer': type(tokenizer).__name__}
