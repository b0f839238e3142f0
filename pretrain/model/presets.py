"""Named architectures: values of ModelConfig's structural fields, each mapping exactly onto a Hugging Face class.

  bert  post-LN encoder: learned positions and token types, erf GELU, LayerNorm eps 1e-12 on the embeddings,
        a pooler, the MLM head (dense + GELU + LayerNorm, then the tied decoder plus a bias)
        <-> BertForMaskedLM, BertForSequenceClassification (BertForPreTraining with a sentence head)
  gpt2  pre-LN decoder: learned positions, tanh GELU, a final LayerNorm (eps 1e-5), the tied LM head without a
        bias; the projections into the residual stream initialised with std / sqrt(2 * layers)
        <-> GPT2LMHeadModel
  llama pre-RMSNorm decoder: rotary positions (rotate-half), SwiGLU MLP, no biases, a final RMSNorm, an untied
        LM head (tying optional), grouped-query attention (num_kv_heads) and any head_dim
        <-> LlamaForCausalLM, LlamaForSequenceClassification
  modernbert pre-LN encoder without biases: LayerNorm after the embeddings (none before layer 0's attention),
        rotary positions, GeGLU MLP, a global layer every third and 128-token sliding windows between them (their
        own rotary base), a final LayerNorm, the MLM head (dense + GELU + LayerNorm, tied decoder plus a bias)
        <-> ModernBertForMaskedLM, ModernBertForSequenceClassification

A config file fills the fields from a preset (configs/common.py) and may override any of them; `preset_of` tells
which preset a ModelConfig still is, which the Hugging Face conversion and the benchmark peers need. Checkpoints
written before the fields existed name a `variant` instead; `legacy_fields` maps it onto its preset.
"""
from pretrain.runtime.errors import ConfigError

# The fields that make an architecture one preset or another (sizes, eps and token types are free within it).
STRUCTURE = ('causal', 'norm', 'norm_position', 'positions', 'mlp', 'use_bias', 'embedding_norm',
             'first_attention_norm', 'final_norm', 'pooler', 'head_transform', 'head_bias', 'tie_embeddings')

PRESETS = {
    'bert': dict(causal=False, norm='layernorm', norm_position='post', positions='learned', mlp='gelu',
                 use_bias=True, embedding_norm=True, first_attention_norm=True, final_norm=False,
                 pooler=True, head_transform=True, head_bias=True, tie_embeddings=True, type_vocab_size=2,
                 layer_norm_eps=1e-12, scale_residual_init=False),
    'gpt2': dict(causal=True, norm='layernorm', norm_position='pre', positions='learned', mlp='gelu_tanh',
                 use_bias=True, embedding_norm=False, first_attention_norm=True, final_norm=True,
                 pooler=False, head_transform=False, head_bias=False, tie_embeddings=True, type_vocab_size=0,
                 layer_norm_eps=1e-5, scale_residual_init=True),
    'llama': dict(causal=True, norm='rmsnorm', norm_position='pre', positions='rotary', mlp='swiglu',
                  use_bias=False, embedding_norm=False, first_attention_norm=True, final_norm=True,
                  pooler=False, head_transform=False, head_bias=False, tie_embeddings=False, type_vocab_size=0,
                  layer_norm_eps=1e-5, scale_residual_init=False),
    'modernbert': dict(causal=False, norm='layernorm', norm_position='pre', positions='rotary', mlp='geglu',
                       use_bias=False, embedding_norm=True, first_attention_norm=False, final_norm=True,
                       pooler=False, head_transform=True, head_bias=True, tie_embeddings=True, type_vocab_size=0,
                       layer_norm_eps=1e-5, rope_theta=160000.0, local_window=128, global_every=3,
                       local_rope_theta=10000.0, scale_residual_init=True),
}
LEGACY_VARIANTS = ('bert', 'gpt2')  # what model.variant named before the architecture fields
# Token types each preset's Hugging Face class allows: (least, most); None = no limit.
_TOKEN_TYPES = {'bert': (1, None), 'gpt2': (0, 0), 'llama': (0, 0), 'modernbert': (0, 0)}
# Structure fields a preset's Hugging Face class leaves free (LlamaConfig.tie_word_embeddings).
_FREE = {'llama': ('tie_embeddings',)}
# Presets whose Hugging Face class has grouped-query attention and a head width of its own.
_GQA = ('llama',)
# Presets whose Hugging Face class has local (sliding-window) attention layers.
_LOCAL_ATTENTION = ('modernbert',)


def preset_fields(name: str) -> dict:
  """The field values of preset `name`; a ConfigError naming the choices for an unknown one."""
  if name not in PRESETS:
    raise ConfigError(f'model preset {name!r} is not one of {tuple(PRESETS)}')
  return dict(PRESETS[name])


def differences(cfg, name: str) -> list[str]:
  """How cfg departs from preset `name`, e.g. ["norm_position='pre' (bert: 'post')"]; [] when it is that preset."""
  preset = PRESETS[name]
  found = [f'{field}={getattr(cfg, field)!r} ({name}: {preset[field]!r})' for field in STRUCTURE
           if getattr(cfg, field) != preset[field] and field not in _FREE.get(name, ())]
  if name not in _GQA:
    if cfg.num_kv_heads != cfg.num_heads:
      found.append(f'num_kv_heads={cfg.num_kv_heads} ({name}: num_heads)')
    if cfg.head_dim * cfg.num_heads != cfg.hidden_size:
      found.append(f'head_dim={cfg.head_dim} ({name}: hidden_size // num_heads)')
  if name not in _LOCAL_ATTENTION and cfg.has_local_layers:
    found.append(f'local_window={cfg.local_window} with global_every={cfg.global_every} ({name}: every layer '
                 'global)')
  least, most = _TOKEN_TYPES[name]
  if cfg.type_vocab_size < least or (most is not None and cfg.type_vocab_size > most):
    allowed = f'{least}' if least == most else f'at least {least}'
    found.append(f'type_vocab_size={cfg.type_vocab_size} ({name}: {allowed})')
  return found


def preset_of(cfg) -> str | None:
  """The preset whose Hugging Face class computes exactly what cfg computes, or None (a custom architecture)."""
  return next((name for name in PRESETS if not differences(cfg, name)), None)


def describe(cfg) -> str:
  """The preset's name, or 'custom (closest preset: how it differs)' for the start-up log and errors."""
  name = preset_of(cfg)
  if name is not None:
    return name
  closest = min(PRESETS, key=lambda n: len(differences(cfg, n)))
  return f'custom ({closest} with {", ".join(differences(cfg, closest))})'


def legacy_fields(saved_model: dict) -> dict:
  """A `model` section written before the architecture fields (it names a `variant`) -> the fields it meant.

  The saved sizes, eps and token types stay; the preset fills in the rest."""
  fields = dict(saved_model)
  variant = fields.pop('variant')
  if variant not in LEGACY_VARIANTS:
    raise ConfigError(f'checkpoint: model.variant {variant!r} is not one of {LEGACY_VARIANTS}')
  return {**PRESETS[variant], **fields}
