"""Our ModelConfig <-> a Hugging Face config.json (BertConfig, GPT2Config, LlamaConfig, ModernBertConfig), through the
presets: a
model exports only when it is exactly one preset (pretrain/model/presets.py), and an import fills the preset's
fields.

Import accepts only settings our model computes exactly; anything else is one error naming the config.json
field (a relu BERT, rotary positions, GPT-2's per-layer attention scaling, Llama's rope_scaling, ModernBERT's
biases, ...). Fields a config.json leaves out take the defaults of the transformers class (LlamaConfig: rms_norm_eps
1e-6, rope_theta 10000, tie_word_embeddings false, num_key_value_heads = num_attention_heads; ModernBertConfig:
norm_eps 1e-5, global_rope_theta 160000, local_rope_theta 10000, local_attention 128, global_attn_every_n_layers 3,
max_position_embeddings 8192).
"""
from pretrain.model import presets
from pretrain.model.config import ModelConfig
from pretrain.runtime.errors import ConfigError, require

# The HF class each of our models exports as.
MASKED_LM = {'bert': 'BertForMaskedLM', 'gpt2': 'GPT2LMHeadModel', 'llama': 'LlamaForCausalLM',
             'modernbert': 'ModernBertForMaskedLM'}
SEQUENCE_CLASSIFICATION = {'bert': 'BertForSequenceClassification', 'llama': 'LlamaForSequenceClassification',
                           'modernbert': 'ModernBertForSequenceClassification'}
TOKEN_CLASSIFICATION = {'bert': 'BertForTokenClassification', 'gpt2': 'GPT2ForTokenClassification',
                        'llama': 'LlamaForTokenClassification', 'modernbert': 'ModernBertForTokenClassification'}
QUESTION_ANSWERING = {'bert': 'BertForQuestionAnswering', 'gpt2': 'GPT2ForQuestionAnswering',
                      'llama': 'LlamaForQuestionAnswering', 'modernbert': 'ModernBertForQuestionAnswering'}
# A fine-tuned Classifier's class by its outputs (heads.OUTPUTS).
FINETUNED = {'sequence': SEQUENCE_CLASSIFICATION, 'tokens': TOKEN_CLASSIFICATION, 'spans': QUESTION_ANSWERING}
# The poolings (heads.resolve_pooling) each sequence-classification class computes (modernbert: its
# classifier_pooling, 'mean' or 'cls').
CLASSIFIER_POOLING = {'bert': ('pooler',), 'llama': ('last',), 'modernbert': ('mean', 'cls')}
# gpt2 MLPs: HF names the tanh approximation of GELU three ways.
_TANH_GELUS = ('gelu_new', 'gelu_pytorch_tanh', 'gelu_fast')


def hf_preset(cfg: ModelConfig, field: str = '--checkpoint') -> str:
  """The preset cfg is, whose Hugging Face classes it exports as; else one error naming how it differs."""
  name = presets.preset_of(cfg)
  require(name is not None, f'{field}: the model is {presets.describe(cfg)}, which no Hugging Face class computes; '
          f'only the presets {", ".join(presets.PRESETS)} export')
  return name


def to_hf_config(cfg: ModelConfig, architecture: str, pad_id: int, cls_id: int, sep_id: int,
                 pooling: str = 'mean') -> dict:
  """pooling: ModernBertConfig.classifier_pooling ('mean' is what pooling 'auto' gives a modernbert)."""
  preset = hf_preset(cfg)
  if preset == 'modernbert':
    return {
        'architectures': [architecture], 'model_type': 'modernbert', 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.hidden_size, 'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads, 'hidden_activation': 'gelu',
        'max_position_embeddings': cfg.max_position_embeddings, 'initializer_range': cfg.initializer_range,
        'norm_eps': cfg.layer_norm_eps, 'norm_bias': False, 'global_rope_theta': cfg.rope_theta,
        'local_rope_theta': cfg.local_rope_theta or cfg.rope_theta, 'local_attention': cfg.local_window or 128,
        # every layer global (no local window): HF's every-first-layer-global
        'global_attn_every_n_layers': cfg.global_every if cfg.has_local_layers else 1,
        'attention_bias': False, 'mlp_bias': False,
        'decoder_bias': True, 'classifier_bias': False, 'classifier_activation': 'gelu',
        'classifier_pooling': pooling, 'attention_dropout': cfg.attention_dropout_rate,
        'embedding_dropout': cfg.dropout_rate, 'mlp_dropout': cfg.dropout_rate, 'classifier_dropout': cfg.dropout_rate,
        'tie_word_embeddings': True, 'pad_token_id': pad_id, 'bos_token_id': cls_id, 'eos_token_id': sep_id,
        'cls_token_id': cls_id, 'sep_token_id': sep_id, 'torch_dtype': 'float32',
    }
  if preset == 'llama':
    return {
        'architectures': [architecture], 'model_type': 'llama', 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.hidden_size, 'intermediate_size': cfg.mlp_dim, 'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads, 'num_key_value_heads': cfg.num_kv_heads, 'head_dim': cfg.head_dim,
        'hidden_act': 'silu', 'max_position_embeddings': cfg.max_position_embeddings,
        'initializer_range': cfg.initializer_range, 'rms_norm_eps': cfg.layer_norm_eps, 'rope_theta': cfg.rope_theta,
        'rope_scaling': None, 'attention_bias': False, 'mlp_bias': False, 'pretraining_tp': 1,
        'attention_dropout': cfg.attention_dropout_rate, 'tie_word_embeddings': cfg.tie_embeddings,
        'bos_token_id': cls_id, 'eos_token_id': sep_id, 'pad_token_id': pad_id, 'use_cache': True,
        'torch_dtype': 'float32',
    }
  if preset == 'bert':
    return {
        'architectures': [architecture], 'model_type': 'bert', 'vocab_size': cfg.vocab_size,
        'hidden_size': cfg.hidden_size, 'num_hidden_layers': cfg.num_layers,
        'num_attention_heads': cfg.num_heads, 'intermediate_size': cfg.mlp_dim, 'hidden_act': 'gelu',
        'hidden_dropout_prob': cfg.dropout_rate, 'attention_probs_dropout_prob': cfg.attention_dropout_rate,
        'max_position_embeddings': cfg.max_position_embeddings, 'type_vocab_size': cfg.type_vocab_size,
        'initializer_range': cfg.initializer_range, 'layer_norm_eps': cfg.layer_norm_eps,
        'position_embedding_type': 'absolute', 'pad_token_id': pad_id, 'tie_word_embeddings': True,
    }
  return {
      'architectures': [architecture], 'model_type': 'gpt2', 'vocab_size': cfg.vocab_size,
      'n_positions': cfg.max_position_embeddings, 'n_embd': cfg.hidden_size, 'n_layer': cfg.num_layers,
      'n_head': cfg.num_heads, 'n_inner': cfg.mlp_dim, 'activation_function': 'gelu_new',
      'resid_pdrop': cfg.dropout_rate, 'embd_pdrop': cfg.dropout_rate, 'attn_pdrop': cfg.attention_dropout_rate,
      'layer_norm_epsilon': cfg.layer_norm_eps, 'initializer_range': cfg.initializer_range,
      'bos_token_id': cls_id, 'eos_token_id': sep_id, 'pad_token_id': pad_id, 'tie_word_embeddings': True,
      'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False,
  }


def _field(hf: dict, key: str, where: str, default=None):
  if key in hf:
    return hf[key]
  if default is None:
    raise ConfigError(f'{where}: field {key!r} is missing')
  return default


def from_hf_config(hf: dict, where: str) -> ModelConfig:
  """A config.json's dict -> our ModelConfig; `where` (the file) is named in every error."""
  model_type = hf.get('model_type')
  if model_type == 'bert':
    act = hf.get('hidden_act', 'gelu')
    require(act == 'gelu', f"{where}: hidden_act {act!r} is not supported (the bert preset uses erf 'gelu')")
    pos = hf.get('position_embedding_type', 'absolute')
    require(pos == 'absolute', f"{where}: position_embedding_type {pos!r} is not supported (only 'absolute')")
    require(not hf.get('is_decoder') and not hf.get('add_cross_attention'),
            f'{where}: is_decoder/add_cross_attention BERT models are not supported')
    g = lambda key, default=None: _field(hf, key, where, default)
    cfg = ModelConfig(**{**presets.preset_fields('bert'), **dict(
        vocab_size=g('vocab_size'), hidden_size=g('hidden_size'),
        num_layers=g('num_hidden_layers'), num_heads=g('num_attention_heads'), mlp_dim=g('intermediate_size'),
        max_position_embeddings=g('max_position_embeddings'), type_vocab_size=g('type_vocab_size', 2),
        dropout_rate=g('hidden_dropout_prob', 0.1), attention_dropout_rate=g('attention_probs_dropout_prob', 0.1),
        layer_norm_eps=g('layer_norm_eps', 1e-12), initializer_range=g('initializer_range', 0.02))})
  elif model_type == 'gpt2':
    act = hf.get('activation_function', 'gelu_new')
    require(act in _TANH_GELUS, f'{where}: activation_function {act!r} is not supported (the gpt2 preset uses '
            "the tanh GELU, 'gelu_new')")
    require(not hf.get('scale_attn_by_inverse_layer_idx'),
            f'{where}: scale_attn_by_inverse_layer_idx true is not supported')
    require(hf.get('scale_attn_weights', True), f'{where}: scale_attn_weights false is not supported')
    require(not hf.get('add_cross_attention'), f'{where}: add_cross_attention GPT-2 models are not supported')
    g = lambda key, default=None: _field(hf, key, where, default)
    hidden = g('n_embd')
    cfg = ModelConfig(**{**presets.preset_fields('gpt2'), **dict(
        vocab_size=g('vocab_size'), hidden_size=hidden, num_layers=g('n_layer'),
        num_heads=g('n_head'), mlp_dim=hf.get('n_inner') or 4 * hidden, max_position_embeddings=g('n_positions'),
        dropout_rate=g('resid_pdrop', 0.1), attention_dropout_rate=g('attn_pdrop', 0.1),
        layer_norm_eps=g('layer_norm_epsilon', 1e-5), initializer_range=g('initializer_range', 0.02))})
  elif model_type == 'llama':
    cfg = _llama_config(hf, where)
  elif model_type == 'modernbert':
    cfg = _modernbert_config(hf, where)
  else:
    raise ConfigError(f"{where}: model_type {model_type!r} is not supported; use a 'bert', 'gpt2', 'llama' or "
                      "'modernbert' checkpoint")
  try:
    cfg.validate()
  except ConfigError as e:
    raise ConfigError(f'{where}: {e}') from None
  return cfg


# LlamaConfig fields whose other values we do not compute: field -> (accepted values, what the error says).
_LLAMA_FIXED = {'hidden_act': (('silu', 'swish'), "only 'silu'"), 'attention_bias': ((False,), 'only false'),
                'mlp_bias': ((False,), 'only false'), 'pretraining_tp': ((1,), 'only 1'),
                'rope_scaling': ((None,), 'only plain rotary positions')}


def _llama_config(hf: dict, where: str) -> ModelConfig:
  for key, (accepted, only) in _LLAMA_FIXED.items():
    value = hf.get(key, accepted[0])
    require(value in accepted, f'{where}: {key} {value!r} is not supported ({only})')
  theta = hf.get('rope_theta', 10000.0)
  rope = hf.get('rope_parameters')  # transformers 5 writes the rotary settings here
  if rope is not None:
    require(rope.get('rope_type', 'default') == 'default',
            f'{where}: rope_parameters {rope!r} is not supported (only plain rotary positions)')
    theta = rope.get('rope_theta', theta)
  g = lambda key, default=None: _field(hf, key, where, default)
  heads = g('num_attention_heads')
  return ModelConfig(**{**presets.preset_fields('llama'), **dict(
      vocab_size=g('vocab_size'), hidden_size=g('hidden_size'), num_layers=g('num_hidden_layers'),
      num_heads=heads, num_kv_heads=hf.get('num_key_value_heads') or heads, head_dim=hf.get('head_dim') or 0,
      mlp_dim=g('intermediate_size'), max_position_embeddings=g('max_position_embeddings', 2048),
      layer_norm_eps=g('rms_norm_eps', 1e-6), rope_theta=float(theta),
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)), dropout_rate=0.0,
      attention_dropout_rate=g('attention_dropout', 0.0), initializer_range=g('initializer_range', 0.02))})


# ModernBertConfig fields whose other values we do not compute: field -> (accepted values, what the error says).
_MODERNBERT_FIXED = {
    'hidden_activation': (('gelu',), "only erf 'gelu'"), 'classifier_activation': (('gelu',), "only erf 'gelu'"),
    'attention_bias': ((False,), 'only false'), 'mlp_bias': ((False,), 'only false'),
    'norm_bias': ((False,), 'only false'), 'classifier_bias': ((False,), 'only false'),
    'decoder_bias': ((True,), 'only true'), 'tie_word_embeddings': ((True,), 'only true: our MLM head is tied'),
    'rope_scaling': ((None,), 'only plain rotary positions'),
}
# transformers 5 writes the rotary bases per layer type into rope_parameters: its key -> our field.
_MODERNBERT_ROPE = {'full_attention': 'rope_theta', 'sliding_attention': 'local_rope_theta'}


def _modernbert_config(hf: dict, where: str) -> ModelConfig:
  for key, (accepted, only) in _MODERNBERT_FIXED.items():
    value = hf.get(key, accepted[0])
    require(value in accepted, f'{where}: {key} {value!r} is not supported ({only})')
  g = lambda key, default=None: _field(hf, key, where, default)
  hidden, heads = g('hidden_size'), g('num_attention_heads')
  require(isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads == 0,
          f'{where}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}')
  local_theta = hf.get('local_rope_theta', 10000.0)
  thetas = {'rope_theta': hf.get('global_rope_theta', 160000.0),
            'local_rope_theta': 0.0 if local_theta is None else local_theta}  # None: the global base
  rope = hf.get('rope_parameters')
  if rope is not None:
    require(isinstance(rope, dict) and set(rope) <= set(_MODERNBERT_ROPE) and all(
        isinstance(p, dict) and p.get('rope_type', 'default') == 'default' for p in rope.values()),
            f'{where}: rope_parameters {rope!r} is not supported (only plain rotary positions)')
    thetas.update({_MODERNBERT_ROPE[k]: p.get('rope_theta', thetas[_MODERNBERT_ROPE[k]]) for k, p in rope.items()})
  return ModelConfig(**{**presets.preset_fields('modernbert'), **dict(
      vocab_size=g('vocab_size'), hidden_size=hidden, num_layers=g('num_hidden_layers'), num_heads=heads,
      num_kv_heads=heads, head_dim=hidden // heads, mlp_dim=g('intermediate_size'),
      max_position_embeddings=g('max_position_embeddings', 8192), layer_norm_eps=g('norm_eps', 1e-5),
      rope_theta=float(thetas['rope_theta']), local_rope_theta=float(thetas['local_rope_theta']),
      local_window=g('local_attention', 128), global_every=g('global_attn_every_n_layers', 3),
      dropout_rate=g('mlp_dropout', 0.0), attention_dropout_rate=g('attention_dropout', 0.0),
      initializer_range=g('initializer_range', 0.02))})
