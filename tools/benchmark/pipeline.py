"""What the train step waits on besides itself: the input pipeline (tokens/s it delivers, on the device) and
the checkpoint stall (the loop time an async Orbax save costs), each measured with the real pieces training uses."""
import statistics
import sys
import time

import jax

from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime import sharding
from pretrain.runtime.errors import require
from pretrain.data.pipeline import build_data
from pretrain.settings import PretrainSettings
from tools.benchmark.step import build


def measure_input_pipeline(config, batches: int, warmup: int = 2) -> dict:
  """Tokens/s the input pipeline delivers, as training builds it (build_data for one process).

  A batch's time is the pull from train_iterator() plus what the loop does with it before the step:
  sharding.global_batch_from_local onto the batch sharding, waited for. The host->device copy is included
  because the step loop waits on it too. Building the pipeline (reading, tokenizer training, packing) and
  `warmup` batches are not timed.

  Returns objective, batches, seconds (all timed batches), tokens_per_sec, batch_ms (mean) and transfer_ms
  (mean of the host->device part).
  """
  require(batches >= 1, f'batches: must be >= 1, got {batches}')
  require(warmup >= 0, f'warmup: must be >= 0, got {warmup}')
  settings = PretrainSettings.from_config(config)
  data = build_data(settings.data, **settings.data_arguments())
  rules = settings.sharding_rules
  mesh = sharding.make_mesh(settings.mesh)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  train_iter = data.train_iterator()

  def pull() -> float:
    """One batch on the device; returns the seconds of its host->device part."""
    local = next(train_iter)
    start = time.perf_counter()
    jax.block_until_ready(sharding.global_batch_from_local(local, batch_sharding))
    return time.perf_counter() - start

  with sharding.use_mesh_and_rules(mesh, rules):
    for _ in range(warmup):
      pull()
    transfer = 0.0
    start = time.perf_counter()
    for _ in range(batches):
      transfer += pull()
    seconds = time.perf_counter() - start
  train_iter.close()
  tokens = batches * settings.tokens_per_step
  return {'objective': settings.objective, 'batches': batches, 'seconds': seconds,
          'tokens_per_sec': tokens / seconds, 'batch_ms': 1000 * seconds / batches,
          'transfer_ms': 1000 * transfer / batches}


def measure_checkpoint_stall(config, workdir: str, steps: int, every: int, rounds: int = 1) -> dict:
  """The train-step loop time lost to checkpointing: the loop of pretrain.train.run (next batch -> global batch
  -> step; every train.log_every-th step's metrics fetched once the next step is queued) for `steps` steps from a
  fresh state, without saves and with an async Checkpointer.save every `every` steps into WORKDIR/checkpoints
  (real, restorable checkpoints; the loop ends with checkpointer.wait(), timed, as a run ends). `rounds` > 1
  alternates the two loops that many times (machine noise drifts over minutes; each round's saves replace the
  last's) and sums their times. The step is compiled and run once before, untimed.

  stall_fraction: (loop time with saves - without) / without; raw, so noise can make it slightly negative.
  save_blocking_ms: the median time inside one save() call, after the loop has waited for the step (which the
  save would wait for anyway, with queued steps the device runs regardless): the state's device->host copy and
  Orbax's synchronous part. stall_fraction_at_config_interval: save_blocking_ms over the time of
  train.checkpoint_every steps. It leaves out the background write's competition with the step for the host
  (shown by extra_ms_per_save: the loop time with saves minus without, per save).

  Returns steps, every, saves (per round), rounds, step_ms (without saves, per step), loop_s and
  loop_with_saves_s (per round), save_blocking_ms, wait_ms (the final wait, median), extra_ms_per_save,
  stall_fraction, stall_fraction_at_config_interval.
  """
  require(every >= 1, f'every: must be >= 1, got {every}')
  require(steps >= every and steps % every == 0, f'steps: must be a positive multiple of every ({every}), got {steps}')
  require(rounds >= 1, f'rounds: must be >= 1, got {rounds}')
  setup = build(config)
  settings, trainer, rules = setup.settings, setup.trainer, setup.settings.sharding_rules
  data = build_data(settings.data, **settings.data_arguments())
  meta = checkpoint_lib.make_meta(settings.as_config(), data.tokenizer)
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=settings.train.keep_checkpoints)
  require(checkpointer.latest_step() is None, f'workdir: {checkpointer.directory} already holds checkpoints')
  log_every = settings.train.log_every

  def loop(train_step, save: bool) -> tuple[float, list[float], float]:
    """(loop seconds, seconds inside each save, seconds of the final wait)."""
    state = jax.block_until_ready(trainer.init())
    train_iter = data.train_iterator()
    save_seconds, wait_seconds, pending = [], 0.0, None
    start = time.perf_counter()
    for step in range(1, steps + 1):
      batch = sharding.global_batch_from_local(next(train_iter), trainer.batch_sharding)
      state, metrics = train_step(state, batch)
      jax.device_get(pending)  # a log step's metrics, fetched once the next step is queued (as run() does)
      pending = metrics if step % log_every == 0 or step == steps else None
      if save and step % every == 0:
        jax.block_until_ready(state)
        save_start = time.perf_counter()
        checkpointer.save(step, state, train_iter.get_state(), meta)
        save_seconds.append(time.perf_counter() - save_start)
    jax.device_get(pending)
    if save:
      wait_start = time.perf_counter()
      checkpointer.wait()
      wait_seconds = time.perf_counter() - wait_start
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    train_iter.close()
    return seconds, save_seconds, wait_seconds

  without, with_saves, save_seconds, waits = 0.0, 0.0, [], []
  try:
    with sharding.use_mesh_and_rules(setup.mesh, rules):
      state = trainer.init()
      train_step = trainer.train_step.lower(state, trainer.abstract_batch).compile()
      warm_iter = data.train_iterator()
      jax.block_until_ready(train_step(state, sharding.global_batch_from_local(next(warm_iter),
                                                                            trainer.batch_sharding)))
      warm_iter.close()
      for _ in range(rounds):
        without += loop(train_step, save=False)[0]
        for step in checkpointer.manager.all_steps():  # the last round's saves
          checkpointer.manager.delete(step)
        seconds, saves, wait = loop(train_step, save=True)
        with_saves, save_seconds, waits = with_saves + seconds, save_seconds + saves, waits + [wait]
  finally:
    checkpointer.close()
  step_ms = 1000 * without / (rounds * steps)
  save_blocking_ms = 1000 * statistics.median(save_seconds)
  return {'steps': steps, 'every': every, 'saves': steps // every, 'rounds': rounds, 'step_ms': step_ms,
          'loop_s': without / rounds, 'loop_with_saves_s': with_saves / rounds,
          'save_blocking_ms': save_blocking_ms, 'wait_ms': 1000 * statistics.median(waits),
          'extra_ms_per_save': 1000 * (with_saves - without) / len(save_seconds),
          'stall_fraction': (with_saves - without) / without,
          'stall_fraction_at_config_interval': save_blocking_ms / (settings.train.checkpoint_every * step_ms)}


def print_input_report(pipelines=(), stall: dict | None = None, step_tokens_per_sec: float | None = None,
                       file=None) -> None:
  """A small table: each pipeline's tokens/s (and its multiple of the step's, when given), then the stall."""
  file = file or sys.stdout
  if pipelines:
    print(f"{'input':<8}{'batches':>9}{'batch ms':>11}{'h->d ms':>10}{'tokens/s':>12}"
          + (f"{'x step':>9}" if step_tokens_per_sec else ''), file=file)
    for p in pipelines:
      print(f"{p['objective']:<8}{p['batches']:>9}{p['batch_ms']:>11.2f}{p.get('transfer_ms', 0.0):>10.2f}"
            f"{p['tokens_per_sec']:>12,.0f}"
            + (f"{p['tokens_per_sec'] / step_tokens_per_sec:>9.1f}" if step_tokens_per_sec else ''), file=file)
    if step_tokens_per_sec:
      print(f'train step: {step_tokens_per_sec:,.0f} tokens/s', file=file)
  if stall:
    print(f"checkpoint every {stall['every']} of {stall['steps']} steps ({stall['saves']} saves): "
          f"step {stall['step_ms']:.1f} ms, save blocks {stall['save_blocking_ms']:.1f} ms, "
          f"final wait {stall['wait_ms']:.0f} ms, loop {stall['loop_s']:.2f} s -> {stall['loop_with_saves_s']:.2f} s "
          f"with saves (stall {100 * stall['stall_fraction']:+.1f}%, {stall['extra_ms_per_save']:+.0f} ms a save), "
          f"at the config's interval {100 * stall['stall_fraction_at_config_interval']:.2f}%", file=file)
