"""optax AdamW with warmup + decay, gradient clipping and a weight-decay mask (no decay on norms and biases)."""
import jax
import optax

from pretrain.runtime.errors import require

SCHEDULES = ('linear', 'cosine', 'constant')


def learning_rate_schedule(train_cfg) -> optax.Schedule:
  """Linear warmup from 0 to learning_rate, then linear/cosine decay to end fraction at train.steps."""
  peak, steps, warmup = float(train_cfg.learning_rate), int(train_cfg.steps), int(train_cfg.warmup_steps)
  require(train_cfg.schedule in SCHEDULES, f'train.schedule: {train_cfg.schedule!r} is not one of {SCHEDULES}')
  require(peak > 0, f'train.learning_rate: must be positive, got {peak}')
  require(steps > 0, f'train.steps: must be positive, got {steps}')
  require(warmup >= 0, f'train.warmup_steps: must be >= 0, got {warmup}')
  warmup = min(warmup, steps)  # a short run (steps overridden) warms up for its whole length
  end = peak * float(train_cfg.end_learning_rate_fraction)
  decay_steps = max(steps - warmup, 1)
  decay = {
      'linear': optax.linear_schedule(peak, end, decay_steps),
      'cosine': optax.cosine_decay_schedule(peak, decay_steps, alpha=float(train_cfg.end_learning_rate_fraction)),
      'constant': optax.constant_schedule(peak),
  }[train_cfg.schedule]
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(params) -> dict:
  """True for matrices (kernels, embeddings); False for biases and LayerNorm scales/offsets."""
  def decays(path, _):
    name = str(getattr(path[-1], 'key', path[-1]))
    return name not in ('bias', 'scale')
  return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  require(train_cfg.grad_clip_norm >= 0, f'train.grad_clip_norm: must be >= 0, got {train_cfg.grad_clip_norm}')
  adamw = optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                      weight_decay=train_cfg.weight_decay, mask=weight_decay_mask)
  if train_cfg.grad_clip_norm > 0:
    return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip_norm), adamw)
  return adamw
