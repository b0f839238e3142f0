"""The fine-tuning loop: epochs of train steps, a dev evaluation after each, the best epoch's parameters kept.

Preemption (SIGTERM, through pretrain's PreemptionWatch) stops the loop after the current step. An epoch counts
once it has been evaluated, so the outcome holds the best of the epochs finished before the signal (none when it
came during the first). A step whose loss or gradients are not finite changes nothing but the step counter
(finetune/steps.py); the loop counts such steps, and train.max_nonfinite_steps of them in a row stop the run
(TrainingDiverged: one line, exit code 1 from the CLI).
"""
import dataclasses
import time
from typing import Callable, Iterator

import jax
import numpy as np

from pretrain.nonfinite import NonfiniteSteps
from pretrain.runtime.metrics_log import MetricsLog
from pretrain.runtime.preemption import PreemptionWatch


@dataclasses.dataclass
class Epochs:
  """What the loop leaves."""
  history: list[dict]  # per finished epoch: epoch, step, train_loss (over its finite steps) and the dev scores
  best_epoch: int | None  # by the headline score; None when no epoch finished
  best_step: int
  best_params: dict | None
  best_predictions: dict | None  # dev split -> the best epoch's predictions
  step: int  # the last step trained
  skipped_steps: int  # non-finite steps
  preempted: bool
  seconds: float


def train_epochs(state: dict, train_step: Callable, batches: Callable[[], Iterator[dict]], steps_per_epoch: int,
                 evaluate: Callable[[dict], tuple[dict, dict]], headline: Callable[[dict], float], train_cfg,
                 learning_rate: Callable[[int], float], log: MetricsLog, tokens_per_step: int,
                 preemption: PreemptionWatch) -> Epochs:
  """batches(): the next epoch's device batches; evaluate(params) -> (dev scores, dev predictions);
  headline(scores): the number the best epoch maximises."""
  nonfinite = NonfiniteSteps(train_cfg.max_nonfinite_steps, 'stopped without writing results. Lower '
                             'train.learning_rate or check the data and init_checkpoint, then rerun')
  out = Epochs([], None, 0, None, None, 0, 0, False, 0.0)
  newest = None  # (step, nonfinite flag) of the newest step: read once the next one is queued

  def read_flag() -> None:
    nonlocal newest
    if newest is not None:
      nonfinite.record(*newest)
      newest = None

  start, step, best = time.perf_counter(), 0, None
  for epoch in range(1, train_cfg.epochs + 1):
    losses, flags = [], []
    for i, batch in enumerate(batches()):
      state, metrics = train_step(state, batch)
      step += 1
      read_flag()
      newest = (step, metrics['nonfinite'])
      losses.append(metrics['loss'])
      flags.append(metrics['nonfinite'])
      if step % train_cfg.log_every == 0 or i == steps_per_epoch - 1:
        read_flag()
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'nonfinite'}
        log.train(step, {**scalars, 'learning_rate': float(learning_rate(step - 1)),
                         'skipped_steps': nonfinite.total}, tokens_per_step)
      out.preempted = preemption.reached(step)
      if out.preempted:
        break
    read_flag()
    if out.preempted:
      break
    scores, predictions = evaluate(state['params'])
    finite = np.asarray(jax.device_get(flags)) == 0
    train_loss = float(np.mean(np.asarray(jax.device_get(losses))[finite])) if finite.any() else None
    out.history.append({'epoch': epoch, 'step': step, 'train_loss': train_loss, **scores})
    log.eval(step, {f'{split}_{name}': v for split, s in scores.items() for name, v in s.items()})
    log.reset_clock(step)
    if best is None or headline(scores) > best:
      best, out.best_epoch, out.best_step = headline(scores), epoch, step
      out.best_params = jax.tree.map(lambda x: x.copy(), state['params'])
      out.best_predictions = predictions
  out.step, out.skipped_steps, out.seconds = step, nonfinite.total, time.perf_counter() - start
  return out
