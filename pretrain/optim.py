"""optax AdamW with warmup + decay, gradient clipping and a weight-decay mask (no decay on norms and biases).

Schedules (train.schedule), each after a linear warmup from 0 to the peak learning_rate over warmup_steps:
  linear, cosine  decay from the peak to end_learning_rate_fraction * peak over the remaining steps;
  constant        the peak to the end;
  wsd             warmup-stable-decay (trapezoidal; ModernBERT, Hägele et al. 2024): the peak until the last
                  decay_fraction of the steps, then down to end_learning_rate_fraction * peak in decay_shape:
                  '1-sqrt' lr = end + (peak - end) * (1 - sqrt(p)), or 'linear' (1 - p), p the fraction of the
                  decay done. The decay starts at round((1 - decay_fraction) * steps), never before the warmup ends.
"""
import dataclasses

import jax
import jax.numpy as jnp
import optax

from pretrain.runtime.errors import require

SCHEDULES = ('linear', 'cosine', 'constant', 'wsd')
DECAY_SHAPES = ('1-sqrt', 'linear')  # wsd's decay


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
  # wsd only (defaults: a config without them, e.g. fine-tuning's, gets these): the decay's share of the steps
  decay_fraction: float = 0.1
  decay_shape: str = '1-sqrt'  # DECAY_SHAPES

  def __post_init__(self):
    require(self.schedule in SCHEDULES, f'train.schedule: {self.schedule!r} is not one of {SCHEDULES}')
    require(0 < self.decay_fraction <= 1,
            f'train.decay_fraction: the share of the steps the wsd decay takes must be in (0, 1], got '
            f'{self.decay_fraction}')
    require(self.decay_shape in DECAY_SHAPES,
            f'train.decay_shape: {self.decay_shape!r} is not one of {DECAY_SHAPES}')
    require(self.learning_rate > 0, f'train.learning_rate: must be positive, got {self.learning_rate}')
    require(self.steps > 0, f'train.steps: must be positive, got {self.steps}')
    require(self.warmup_steps >= 0, f'train.warmup_steps: must be >= 0, got {self.warmup_steps}')
    require(self.grad_clip_norm >= 0, f'train.grad_clip_norm: must be >= 0, got {self.grad_clip_norm}')

  @classmethod
  def pick(cls, section, **changes) -> 'OptimizerSettings':
    """The optimizer fields of a config section (or settings object) that holds them, with `changes`; a field
    with a default may be missing from it."""
    values = {f.name: getattr(section, f.name) for f in dataclasses.fields(cls)
              if f.name not in changes and (f.default is dataclasses.MISSING or hasattr(section, f.name))}
    return cls(**values, **changes)


def learning_rate_schedule(settings: OptimizerSettings) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then the decay of settings.schedule (module docstring) to the end
  fraction at `steps`."""
  peak, steps = float(settings.learning_rate), int(settings.steps)
  warmup = min(int(settings.warmup_steps), steps)  # a short run (steps overridden) warms up for its whole length
  end = peak * float(settings.end_learning_rate_fraction)
  decay_steps = max(steps - warmup, 1)
  decay = {
      'linear': lambda: optax.linear_schedule(peak, end, decay_steps),
      'cosine': lambda: optax.cosine_decay_schedule(peak, decay_steps,
                                                    alpha=float(settings.end_learning_rate_fraction)),
      'constant': lambda: optax.constant_schedule(peak),
      'wsd': lambda: _stable_then_decay(settings, peak, end, warmup),
  }[settings.schedule]()
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def wsd_decay_start(settings: OptimizerSettings) -> int:
  """The step at which wsd's decay begins: the last decay_fraction of the steps, after the warmup."""
  steps = int(settings.steps)
  return max(min(int(settings.warmup_steps), steps), steps - round(float(settings.decay_fraction) * steps))


def _stable_then_decay(settings: OptimizerSettings, peak: float, end: float, warmup: int) -> optax.Schedule:
  """wsd after the warmup (its step 0 is the warmup's end): the peak, then the decay to `end` at `steps`."""
  start = wsd_decay_start(settings) - warmup
  length = max(int(settings.steps) - warmup - start, 1)
  shape = settings.decay_shape

  def schedule(step):
    done = jnp.clip((step - start) / length, 0.0, 1.0)  # [0, 1]: the fraction of the decay done
    remaining = 1.0 - (jnp.sqrt(done) if shape == '1-sqrt' else done)
    return end + (peak - end) * remaining
  return schedule


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
