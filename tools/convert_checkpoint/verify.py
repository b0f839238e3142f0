"""`--verify`: run our checkpoint and the Hugging Face directory on the same random tokens and report the
largest difference of their outputs (logits where both have the head, else the encoder's hidden states). Per-token
heads (token classification; question answering: start and end logits) run on a padded batch and compare real
tokens only."""
import json
import pathlib

import jax.numpy as jnp
import numpy as np

from pretrain.runtime.errors import ConfigError
from pretrain.model import hf_config
from pretrain.model import load as model_load

HEAD_CLASSES = ('BertForMaskedLM', 'GPT2LMHeadModel', 'LlamaForCausalLM', 'ModernBertForMaskedLM',
                'BertForSequenceClassification', 'LlamaForSequenceClassification',
                'ModernBertForSequenceClassification', *hf_config.TOKEN_CLASSIFICATION.values(),
                *hf_config.QUESTION_ANSWERING.values())
TOLERANCE = 1e-4  # float32; measured differences are around 1e-6


def max_output_difference(checkpoint: str, hf_dir: str, seed: int = 0) -> tuple[float, str]:
  """(max |ours - transformers|, what was compared: the HF class and output)."""
  import torch  # pylint: disable=import-outside-toplevel
  import transformers  # pylint: disable=import-outside-toplevel
  transformers.logging.set_verbosity_error()  # its load report lists our stored bert pooler as unexpected
  transformers.logging.disable_progress_bar()
  loaded = model_load.load_checkpoint(checkpoint)
  cfg = loaded.model_cfg
  architecture = json.loads((pathlib.Path(hf_dir) / 'config.json').read_text()).get('architectures', [''])[0]
  fresh = loaded.meta.get('imported_from', {}).get('freshly_initialised', [])
  finetuned_class = architecture.endswith(('Classification', 'QuestionAnswering'))
  with_head = (architecture in HEAD_CLASSES and not any(name.endswith('head') for name in fresh)
               and finetuned_class == (loaded.classifier is not None))
  per_token = with_head and model_load.classifier_outputs(loaded.classifier) in ('tokens', 'spans')
  hf_class = getattr(transformers, architecture) if with_head else transformers.AutoModel
  reference = hf_class.from_pretrained(hf_dir).eval()
  length = min(32, cfg.max_position_embeddings)
  ids = np.random.default_rng(seed).integers(0, loaded.tokenizer.vocab_size, (2, length))
  pad = reference.config.pad_token_id
  if loaded.classifier is not None and pad is not None:  # a last-token classifier stops at padding: none here
    ids = np.where(ids == pad, (pad + 1) % loaded.tokenizer.vocab_size, ids)
  types = np.tile((np.arange(length) >= length // 2).astype(np.int64), (2, 1)) if cfg.type_vocab_size > 1 else \
      np.zeros_like(ids)
  real = np.ones_like(ids)
  if per_token:  # the second row padded from three quarters on (its padding ids stay random: the mask decides)
    real[1, 3 * length // 4:] = 0
  extra = {'token_type_ids': torch.tensor(types)} if cfg.type_vocab_size else {}
  if per_token:
    extra['attention_mask'] = torch.tensor(real)
  with torch.no_grad():
    out = reference(torch.tensor(ids), **extra)
  if not with_head:
    theirs = out.last_hidden_state
  elif architecture.endswith('QuestionAnswering'):
    theirs = torch.stack([out.start_logits, out.end_logits], dim=-1)  # our 'spans' head's [batch, length, 2]
  else:
    theirs = out.logits
  model = loaded.build()
  if not with_head:
    ours = model.encoder(jnp.asarray(ids), token_type_ids=jnp.asarray(types))
  elif loaded.classifier is not None:
    ours = model(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(real))
  else:
    ours = model(jnp.asarray(ids), token_type_ids=jnp.asarray(types))
  diff = np.abs(np.asarray(ours) - theirs.numpy())
  output = ('start/end logits' if architecture.endswith('QuestionAnswering') else 'logits') if with_head else \
      'hidden states'
  what = f'{type(reference).__name__} {output}' + (' on real tokens' if per_token else '')
  return float((diff[real == 1] if per_token else diff).max()), what


def verify(checkpoint: str, hf_dir: str) -> str:
  """A one-line report; ConfigError when the difference exceeds TOLERANCE."""
  diff, what = max_output_difference(checkpoint, hf_dir)
  if not diff <= TOLERANCE:
    raise ConfigError(f'--verify: {what} differ by {diff:.3g} (more than {TOLERANCE:g}) between {checkpoint} and '
                      f'{hf_dir}')
  return f'verified: {what} match transformers within {diff:.2g} (max |difference|, float32, 2 x 32 random tokens)'
