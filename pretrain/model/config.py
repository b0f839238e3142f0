"""The model's frozen settings, built once from the ConfigDict and validated; layers never see the ConfigDict."""
import dataclasses

import jax
import jax.numpy as jnp

from pretrain.runtime.errors import require

VARIANTS = ('bert', 'gpt2')
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# The settings that leave the parameters alone: a fine-tuning run sets them over its checkpoint's.
RUNTIME_FIELDS = ('dropout_rate', 'attention_dropout_rate', 'dtype', 'remat_policy')


def validate_runtime(model_cfg) -> None:
  """Checks RUNTIME_FIELDS of a ModelConfig or a config's `model` section."""
  for name in ('dropout_rate', 'attention_dropout_rate'):
    rate = getattr(model_cfg, name)
    require(0.0 <= rate < 1.0, f'model.{name}: must be in [0, 1), got {rate}')
  require(model_cfg.dtype in DTYPES, f'model.dtype: {model_cfg.dtype!r} is not one of {tuple(DTYPES)}')
  require(model_cfg.remat_policy in REMAT_POLICIES,
          f'model.remat_policy: {model_cfg.remat_policy!r} is not one of {REMAT_POLICIES}')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """bert: post-LN encoder, token types, erf GELU, pooler. gpt2: pre-LN decoder, tanh GELU, final LN."""
  variant: str
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  mlp_dim: int
  max_position_embeddings: int
  type_vocab_size: int = 0
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.0
  layer_norm_eps: float = 1e-12
  initializer_range: float = 0.02
  dtype: str = 'float32'
  remat_policy: str = 'none'
  # A next-sentence / sentence-order head on the pooler: set by pretrain.config_checks.validate from
  # mlm.sentence_task (config.model has no such field).
  sentence_head: bool = False

  @property
  def causal(self) -> bool:
    return self.variant == 'gpt2'

  @property
  def pre_layer_norm(self) -> bool:
    return self.variant == 'gpt2'

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]

  @classmethod
  def from_config(cls, model_cfg) -> 'ModelConfig':
    fields = {f.name for f in dataclasses.fields(cls)}
    cfg = cls(**{k: v for k, v in model_cfg.items() if k in fields})
    cfg.validate()
    return cfg

  def validate(self) -> None:
    require(self.variant in VARIANTS, f'model.variant: {self.variant!r} is not one of {VARIANTS}')
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim', 'max_position_embeddings'):
      require(getattr(self, name) > 0, f'model.{name}: must be positive, got {getattr(self, name)}')
    require(self.hidden_size % self.num_heads == 0,
            f'model.num_heads: {self.num_heads} does not divide model.hidden_size {self.hidden_size}')
    require(self.variant != 'bert' or self.type_vocab_size > 0,
            'model.type_vocab_size: the bert variant needs at least 1 token type')
    validate_runtime(self)

  def checkpoint_policy(self):
    """The jax.checkpoint policy for one block, or None when nothing is rematerialised."""
    return {
        'none': None,
        'full': jax.checkpoint_policies.nothing_saveable,
        'dots_saveable': jax.checkpoint_policies.dots_saveable,
        'dots_with_no_batch_dims': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[self.remat_policy]
