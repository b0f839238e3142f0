"""optax AdamW with warmup + decay, gradient clipping and a weight-decay mask (no decay on norms and biases)."""
import dataclasses

import jax
import optax

from pretrain.runtime.errors import require

SCHEDULES = ('linear', 'cosine', 'constant')


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  """What the optimizer and its schedule read; pretraining takes them from config.train, fine-tuning derives
  steps and warmup from its epochs. Validated when built: every error names `train.<field>`."""
  learning_rate: float
  steps: int
  warmup_steps: int
  end_learning_rate_fraction: float
  schedule: str  # SCHEDULES: the decay after the warmup
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float  # 0: no clipping

  def __post_init__(self):
    require(self.schedule in SCHEDULES, f'train.schedule: {self.schedule!r} is not one of {SCHEDULES}')
    require(self.learning_rate > 0, f'train.learning_rate: must be positive, got {self.learning_rate}')
    require(self.steps > 0, f'train.steps: must be positive, got {self.steps}')
    require(self.warmup_steps >= 0, f'train.warmup_steps: must be >= 0, got {self.warmup_steps}')
    require(self.grad_clip_norm >= 0, f'train.grad_clip_norm: must be >= 0, got {self.grad_clip_norm}')

  @classmethod
  def pick(cls, section, **changes) -> 'OptimizerSettings':
    """The optimizer fields of a config section (or settings object) that holds them, with `changes`."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls) if f.name not in changes}
    return cls(**values, **changes)


def learning_rate_schedule(settings: OptimizerSettings) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then linear/cosine decay to the end fraction at `steps`."""
  peak, steps = float(settings.learning_rate), int(settings.steps)
  warmup = min(int(settings.warmup_steps), steps)  # a short run (steps overridden) warms up for its whole length
  end = peak * float(settings.end_learning_rate_fraction)
  decay_steps = max(steps - warmup, 1)
  decay = {
      'linear': optax.linear_schedule(peak, end, decay_steps),
      'cosine': optax.cosine_decay_schedule(peak, decay_steps, alpha=float(settings.end_learning_rate_fraction)),
      'constant': optax.constant_schedule(peak),
  }[settings.schedule]
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params) -> dict:
  """True for matrices (kernels, embeddings); False for biases and LayerNorm scales/offsets."""
  def decays(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return name not in ('bias', 'scale')
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(settings: OptimizerSettings) -> optax.GradientTransformation:
  adamw = optax.adamw(learning_rate_schedule(settings), b1=settings.b1, b2=settings.b2, eps=settings.eps,
                      weight_decay=settings.weight_decay, mask=weight_decay_mask)
  if settings.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip_norm), adamw)
  return adamw
