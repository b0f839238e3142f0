"""The model's frozen settings: the architecture as independent fields, built once from a config's `model` section
and validated; layers never see the ConfigDict. Named architectures (bert, gpt2, llama, modernbert) are presets of
these fields (pretrain/model/presets.py); the objective does not imply any of them.

Every field has a role (its metadata), and the lists other modules need come from the roles alone:
  architecture  parameter shapes and numerics: fixed by a checkpoint (a resume must match them; init_checkpoint
                and fine-tuning take them from it)
  runtime       dropout, compute dtype, remat: free to change over a checkpoint (fine-tuning sets its own)
  init          how fresh parameters are drawn: no effect once parameters are restored
  objective     set from the objective's settings (the nsp/sop head of mlm.sentence_task), not from config.model
"""
import dataclasses

import jax
import jax.numpy as jnp

from pretrain.model import presets
from pretrain.runtime.errors import ConfigError, require

NORMS = ('layernorm', 'rmsnorm')  # rmsnorm: x / rms(x) * scale, no mean, no bias (llama)
NORM_POSITIONS = ('pre', 'post')  # pre: x + f(norm(x)) (gpt2); post: norm(x + f(x)) (bert)
POSITIONS = ('learned', 'rotary')  # learned absolute embeddings, or rotary on q and k (rotate-half, rope_theta)
# gelu, gelu_tanh: dense -> activation -> dense with exact (erf) GELU or its tanh approximation;
# swiglu: down(silu(gate(x)) * up(x)) (llama); geglu: down(gelu(gate(x)) * up(x)), exact GELU (modernbert)
MLPS = ('gelu', 'gelu_tanh', 'swiglu', 'geglu')
GATED_MLPS = ('swiglu', 'geglu')
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims')
ATTENTION_IMPLS = ('auto', 'xla', 'cudnn', 'pallas_gpu', 'splash')  # pretrain/model/attention_kernels.py
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
ROLES = ('architecture', 'runtime', 'init', 'objective')


def _field(role: str, default=dataclasses.MISSING):
  return dataclasses.field(default=default, metadata={'role': role})


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelConfig:
  """One Transformer: embeddings, scanned blocks, optional pooler, an output head tied to the embedding or not."""
  # Sizes.
  vocab_size: int = _field('architecture')
  hidden_size: int = _field('architecture')
  num_layers: int = _field('architecture')
  num_heads: int = _field('architecture')
  # Key/value heads: a divisor of num_heads (grouped-query attention; 1 = multi-query). 0: num_heads.
  num_kv_heads: int = _field('architecture', 0)
  head_dim: int = _field('architecture', 0)  # width of one head; 0: hidden_size // num_heads
  mlp_dim: int = _field('architecture')
  max_position_embeddings: int = _field('architecture')
  type_vocab_size: int = _field('architecture')  # 0: no token-type embedding
  # Structure.
  causal: bool = _field('architecture')  # a token attends to itself and earlier tokens only (a decoder)
  norm: str = _field('architecture')  # NORMS
  norm_position: str = _field('architecture')  # NORM_POSITIONS
  layer_norm_eps: float = _field('architecture')
  positions: str = _field('architecture')  # POSITIONS
  rope_theta: float = _field('architecture', 10000.0)  # the rotary base (positions 'rotary' only; global layers)
  # Local attention (modernbert): with local_window > 0, layer l is global when l % global_every == 0 and local
  # otherwise; a local layer's token sees the tokens of its document within local_window // 2 positions either
  # side (ModernBERT's local_attention), with rotary base local_rope_theta (0: rope_theta).
  local_window: int = _field('architecture', 0)
  global_every: int = _field('architecture', 1)
  local_rope_theta: float = _field('architecture', 0.0)
  mlp: str = _field('architecture')  # MLPS
  use_bias: bool = _field('architecture')  # biases of the dense layers and norms
  embedding_norm: bool = _field('architecture')  # a norm right after the embeddings (bert)
  # false: layer 0 has no attention norm (modernbert, pre-norm: the embedding norm precedes it)
  first_attention_norm: bool = _field('architecture', True)
  final_norm: bool = _field('architecture')  # a norm after the last block (pre-norm models)
  pooler: bool = _field('architecture')  # tanh(dense(hidden of the first token)): bert's sentence vector
  head_transform: bool = _field('architecture')  # dense -> activation -> norm before the output layer (bert)
  head_bias: bool = _field('architecture')  # a bias on the output logits
  tie_embeddings: bool = _field('architecture')  # the output layer is the token embedding (transposed)
  # How fresh parameters are drawn.
  initializer_range: float = _field('init', 0.02)
  scale_residual_init: bool = _field('init', False)  # gpt2: layers writing the residual stream std / sqrt(2 L)
  # Free to change over a checkpoint.
  dropout_rate: float = _field('runtime', 0.1)
  attention_dropout_rate: float = _field('runtime', 0.0)
  dtype: str = _field('runtime', 'float32')  # compute dtype; parameters are float32
  remat_policy: str = _field('runtime', 'none')
  # The attention kernel, ATTENTION_IMPLS (pretrain/model/attention_kernels.py); auto: the fastest that fits.
  attention_impl: str = _field('runtime', 'auto')
  # A 2-way next-sentence / sentence-order head on the pooler (mlm.sentence_task nsp or sop).
  sentence_head: bool = _field('objective', False)

  def __post_init__(self):
    # The 0 defaults resolve here, so a checkpoint written before these fields compares equal to a config that
    # states them.
    if self.num_kv_heads == 0:
      object.__setattr__(self, 'num_kv_heads', self.num_heads)
    if self.head_dim == 0 and self.num_heads > 0 and self.hidden_size % self.num_heads == 0:
      object.__setattr__(self, 'head_dim', self.hidden_size // self.num_heads)

  @property
  def kv_groups(self) -> int:
    """Query heads per key/value head (1 without grouped-query attention)."""
    return self.num_heads // self.num_kv_heads

  @property
  def has_local_layers(self) -> bool:
    return self.local_window > 0 and self.global_every > 1

  def layer_rope_theta(self, is_global) -> jax.Array | float:
    """The rotary base of a layer (is_global: a traced bool inside the layer scan)."""
    if not self.has_local_layers:
      return self.rope_theta
    return jnp.where(is_global, self.rope_theta, self.local_rope_theta or self.rope_theta)

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @classmethod
  def from_config(cls, model_cfg, **changes) -> 'ModelConfig':
    """From a config's `model` section (a ConfigDict or dict holding every field but the objective's), validated.
    An architecture field it lacks is one error naming it."""
    values = dict(model_cfg.items())
    values.update(changes)
    for name in fields_with_role('architecture'):
      require(name in values or _has_default(name), f'model.{name}: missing from the config (a preset of '
              'pretrain/model/presets.py fills in every architecture field)')
    cfg = cls(**{k: v for k, v in values.items() if k in field_names()})
    cfg.validate()
    return cfg

  def validate(self) -> None:
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'max_position_embeddings'):
      require(getattr(self, name) > 0, f'model.{name}: must be positive, got {getattr(self, name)}')
    require(self.head_dim >= 0, f'model.head_dim: must be positive (0: hidden_size // num_heads), got {self.head_dim}')
    require(self.head_dim > 0,
            f'model.num_heads: {self.num_heads} does not divide model.hidden_size {self.hidden_size}')
    require(self.num_kv_heads > 0 and self.num_heads % self.num_kv_heads == 0,
            f'model.num_kv_heads: {self.num_kv_heads} does not divide model.num_heads {self.num_heads}')
    require(self.head_dim % 2 == 0 or self.positions != 'rotary',
            f'model.head_dim: rotary positions need an even head width, got {self.head_dim}')
    require(self.rope_theta > 0, f'model.rope_theta: must be positive, got {self.rope_theta}')
    require(self.local_window >= 0,
            f'model.local_window: must be >= 0 (0: every layer global), got {self.local_window}')
    require(self.global_every >= 1, f'model.global_every: must be >= 1, got {self.global_every}')
    require(self.local_rope_theta >= 0, f'model.local_rope_theta: must be >= 0 (0: rope_theta), '
            f'got {self.local_rope_theta}')
    require(self.first_attention_norm or self.norm_position == 'pre',
            "model.first_attention_norm: false needs model.norm_position 'pre' (a post-norm block's norms are "
            'its outputs)')
    require(self.type_vocab_size >= 0, f'model.type_vocab_size: must be >= 0, got {self.type_vocab_size}')
    for name, choices in (('norm', NORMS), ('norm_position', NORM_POSITIONS), ('positions', POSITIONS),
                          ('mlp', MLPS)):
      require(getattr(self, name) in choices, f'model.{name}: {getattr(self, name)!r} is not one of {choices}')
    require(self.layer_norm_eps > 0, f'model.layer_norm_eps: must be positive, got {self.layer_norm_eps}')
    require(self.initializer_range > 0, f'model.initializer_range: must be positive, got {self.initializer_range}')
    require(not self.sentence_head or self.pooler,
            'model.pooler: the sentence head (mlm.sentence_task nsp or sop) reads the pooled first token; '
            'set model.pooler=true')
    validate_runtime(self)

  def checkpoint_policy(self):
    """The jax.checkpoint policy for one block, or None when nothing is rematerialised."""
    return {
        'none': None,
        'full': jax.checkpoint_policies.nothing_saveable,
        'dots_saveable': jax.checkpoint_policies.dots_saveable,
        'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[self.remat_policy]

  def architecture(self) -> dict:
    """The architecture fields and their values: what a checkpoint fixes."""
    return {name: getattr(self, name) for name in fields_with_role('architecture')}


def _has_default(name: str) -> bool:
  field = ModelConfig.__dataclass_fields__[name]
  return field.default is not dataclasses.MISSING


def field_names() -> tuple[str, ...]:
  return tuple(f.name for f in dataclasses.fields(ModelConfig))


def fields_with_role(role: str) -> tuple[str, ...]:
  """The ModelConfig fields of one role (ROLES), in declaration order."""
  assert role in ROLES, role
  return tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata['role'] == role)


def validate_runtime(model_cfg) -> None:
  """Checks the runtime fields of a ModelConfig or of a config's `model` section."""
  for name in ('dropout_rate', 'attention_dropout_rate'):
    rate = getattr(model_cfg, name)
    require(0.0 <= rate < 1.0, f'model.{name}: must be in [0, 1), got {rate}')
  require(model_cfg.dtype in DTYPES, f'model.dtype: {model_cfg.dtype!r} is not one of {tuple(DTYPES)}')
  require(model_cfg.remat_policy in REMAT_POLICIES,
          f'model.remat_policy: {model_cfg.remat_policy!r} is not one of {REMAT_POLICIES}')
  require(model_cfg.attention_impl in ATTENTION_IMPLS,
          f'model.attention_impl: {model_cfg.attention_impl!r} is not one of {ATTENTION_IMPLS}')


def from_checkpoint_meta(meta: dict, **changes) -> ModelConfig:
  """The ModelConfig a checkpoint was written with, from its meta item alone: the one place that reads it.

  Pretraining checkpoints store their config (its `model` section holds every field but the objective's); the
  sentence head comes from their mlm.sentence_task. Fine-tuned ones (meta['classifier']) have no sentence head.
  Checkpoints written before the architecture fields name a `variant` instead, mapped onto its preset.
  `changes` replace fields, typically the runtime ones (fields_with_role('runtime')) of the run that loads it.
  """
  config = meta['config']
  saved = dict(config['model'])
  if 'variant' in saved:
    saved = presets.legacy_fields(saved)
  sentence_task = config.get('mlm', {}).get('sentence_task', 'none') if 'classifier' not in meta else 'none'
  saved['sentence_head'] = sentence_task != 'none'
  saved.update(changes)
  try:
    return ModelConfig.from_config(saved)
  except ConfigError as e:
    raise ConfigError(f'checkpoint: its {e}') from None
