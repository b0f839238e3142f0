"""run(config, workdir): the training loop: settings -> data -> trainer -> restore or init -> steps, with logs,
evaluations and checkpoints.

Rerunning on the same workdir resumes from the newest checkpoint and continues exactly. Only this module runs the
loop; what it compiles comes from pretrain/trainer.py, which fine-tuning and the tools import instead.
"""
import pathlib
import time

import jax
import jax.numpy as jnp
from absl import logging

from pretrain.data import pipeline as data_lib
from pretrain.data.tokenizers import tokenizer_from_meta
from pretrain.model import presets
from pretrain.model.attention_kernels import resolve_attention_impl
from pretrain.model.config import fields_with_role, from_checkpoint_meta
from pretrain.nonfinite import NonfiniteSteps
from pretrain.optim import learning_rate_schedule
from pretrain.runtime import accelerators, distributed, sharding
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import require
from pretrain.runtime.files import check_writable_dir, write_atomic
from pretrain.runtime.metrics_log import MetricsLog
from pretrain.runtime.preemption import PreemptionWatch
from pretrain.runtime.profiling import StepProfiler
from pretrain.settings import PretrainSettings, check_batch_split, check_resumable, schedule_change
from pretrain.trainer import Trainer, flops_per_token, make_trainer


def settings_with_init_checkpoint(config) -> tuple[PretrainSettings, object]:
  """The run's settings and, with config.init_checkpoint, its tokenizer: the checkpoint's architecture replaces
  config.model's (this run's runtime and init fields and sentence head stay)."""
  if not config.init_checkpoint:
    return PretrainSettings.from_config(config), None
  _, meta = checkpoint_lib.read_checked_meta(config.init_checkpoint, 'init_checkpoint')
  keep = {name: config.model[name] for role in ('runtime', 'init') for name in fields_with_role(role)}
  model = from_checkpoint_meta(meta, **keep, sentence_head=config.mlm.sentence_task != 'none')
  return PretrainSettings.from_config(config, model=model), tokenizer_from_meta(meta)


def _init_params(settings: PretrainSettings, trainer: Trainer, fresh_params: dict) -> dict:
  """init_checkpoint's parameters; a sentence head it lacks (an MLM-only or imported checkpoint) stays fresh."""
  _, meta = checkpoint_lib.read_checked_meta(settings.init_checkpoint, 'init_checkpoint')
  target = dict(trainer.abstract_state['params'])
  if 'sentence_head' in target and not from_checkpoint_meta(meta).sentence_head:
    del target['sentence_head']
    logging.info('init_checkpoint has no sentence head: it starts freshly initialised')
  params = checkpoint_lib.restore_params(settings.init_checkpoint, target)
  for path, leaf in jax.tree_util.tree_leaves_with_path(params):  # a NaN start would make every step a skipped one
    require(bool(jnp.all(jnp.isfinite(leaf))), f'init_checkpoint: parameter '
            f'{".".join(str(getattr(k, "key", k)) for k in path)} of {settings.init_checkpoint} has non-finite values')
  return {**fresh_params, **params}


def _build_data(settings: PretrainSettings, tokenizer) -> data_lib.DataPipeline:
  """This process's data. Every process must tokenize alike: when the tokenizer is made from the data (trained on
  it, or read from a prepared directory), process 0 makes it and sends it to the others. Then the processes compare
  what they read (pretrain/data/fingerprint.py); any difference stops every one of them with one line."""
  build = lambda tokenizer: data_lib.build_data(settings.data, **settings.data_arguments(),
                                                process_index=jax.process_index(),
                                                process_count=jax.process_count(), tokenizer=tokenizer)
  if jax.process_count() == 1:
    return build(tokenizer)
  if tokenizer is not None or settings.data.tokenizer:
    data = build(tokenizer)
  else:
    data = build(None) if jax.process_index() == 0 else None
    meta = distributed.broadcast_json({'tokenizer': data.tokenizer.to_meta()} if data is not None else None)
    data = data or build(tokenizer_from_meta(meta))
  data.check_processes_agree(distributed.allgather_json(data.fingerprint))
  return data


def run(config, workdir: str) -> dict:
  """Pretrains (or resumes) per `config` (a ConfigDict of configs/) in `workdir`; returns the last train and
  eval metrics.

  config.init_checkpoint (any checkpoint: an import from Hugging Face, another run) starts a new run from its
  parameters, with its architecture and tokenizer; the optimizer and the data start fresh.

  SIGTERM finishes the current step, saves a checkpoint and returns (summary['preempted'] is True).
  """
  require('://' not in str(workdir), f'--workdir: {workdir} is a URL; use a path on a filesystem every host mounts '
          '(NFS, Filestore, or a bucket mounted with gcsfuse)')
  settings, init_tokenizer = settings_with_init_checkpoint(config)
  workdir = str(check_writable_dir(workdir, '--workdir'))
  with PreemptionWatch() as preemption:
    return _run(settings, workdir, init_tokenizer, preemption)


def _run(settings: PretrainSettings, workdir: str, init_tokenizer, preemption: PreemptionWatch) -> dict:
  mesh = sharding.make_mesh(settings.mesh)
  check_batch_split(settings, sharding.data_parallel_size(mesh, settings.sharding_rules))
  is_main = jax.process_index() == 0

  newest = checkpoint_lib.newest_meta(pathlib.Path(workdir) / 'checkpoints')  # read only: nothing is created yet
  tokenizer = init_tokenizer
  if newest is not None:  # the tokenizer travels with the checkpoint
    check_resumable(settings, newest[1], pathlib.Path(workdir) / 'checkpoints' / str(newest[0]))
    tokenizer = tokenizer_from_meta(newest[1])
  data = _build_data(settings, tokenizer)
  meta = checkpoint_lib.make_meta(settings.as_config(), data.tokenizer)
  if is_main:
    data.tokenizer.save(pathlib.Path(workdir) / data.tokenizer.file_name)
    write_atomic(pathlib.Path(workdir) / 'config.json', settings.to_json(indent=2))
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=settings.train.keep_checkpoints)
  try:
    summary = _train(settings, workdir, mesh, data, newest, checkpointer, meta, preemption)
    checkpointer.close()  # waits for the last save to commit
  except BaseException:
    checkpointer.abandon()
    raise
  return summary


def _train(settings: PretrainSettings, workdir: str, mesh, data: data_lib.DataPipeline, newest: tuple | None,
           checkpointer: checkpoint_lib.Checkpointer, meta: dict, preemption: PreemptionWatch) -> dict:
  """Restores (newest: (step, meta) of the newest checkpoint) or initialises the state, compiles, and runs the
  loop with its logs, evals and checkpoints."""
  train = settings.train
  is_main = jax.process_index() == 0
  schedule = learning_rate_schedule(train.optimizer)
  steps = train.steps
  stop_at = min(steps, train.stop_at_step or steps)
  attention_impl = resolve_attention_impl(settings.model, jax.default_backend())  # a bad choice fails here

  with sharding.use_mesh_and_rules(mesh, settings.sharding_rules):
    trainer = make_trainer(settings, mesh, data.tokenizer)
    objective = trainer.objective
    train_iter = data.train_iterator()
    if newest is not None:
      latest, state, data_state = checkpointer.restore_newest(trainer.abstract_state, newest[0])
      train_iter.set_state(data_state)
      logging.info('resumed from %s at step %d', checkpointer.directory / str(latest), latest)
      change = schedule_change(settings, newest[1], latest)
      if change:
        logging.warning('%s', change)
    else:
      state = trainer.init()
      if settings.init_checkpoint:
        state['params'] = _init_params(settings, trainer, state['params'])
        logging.info('initialised the parameters from %s', settings.init_checkpoint)
    num_params = sum(x.size for x in jax.tree.leaves(state['params']))
    logging.info('model: %s, %s parameters; mesh %s; global batch %d x %d tokens', presets.describe(settings.model),
                 f'{num_params:,}', dict(mesh.shape), train.batch_size, settings.data.seq_len)
    logging.info('attention: %s%s', attention_impl,
                 f' (chosen by model.attention_impl auto on {jax.default_backend()})'
                 if settings.model.attention_impl == 'auto' else '')

    start = time.perf_counter()
    train_step = trainer.train_step.lower(state, trainer.abstract_batch).compile()
    compile_s = time.perf_counter() - start
    logging.info('compiled the train step in %.1f s', compile_s)
    eval_set = [sharding.global_batch_from_local(b, trainer.batch_sharding)
                for b in data.eval_batches(train.eval_batches)]

    def evaluate() -> dict:
      # Fetched batch by batch (summed on the host): one eval program in flight at a time.
      sums = [jax.device_get(trainer.eval_step(state['params'], state['rng'], b, i)) for i, b in enumerate(eval_set)]
      return objective.eval_metrics({k: sum(float(s[k]) for s in sums) for k in sums[0]} if sums else {})

    step = int(jax.device_get(state['step']))
    accelerator = accelerators.detect(jax.devices()[0].device_kind)
    log = MetricsLog(workdir, steps, step, enabled=is_main, flops_per_token=flops_per_token(settings),
                     peak_flops_per_s=accelerator.peak_flops_per_s * jax.device_count() if accelerator else None,
                     num_devices=jax.device_count())
    summary = {'compile_s': compile_s, 'preempted': False}
    nonfinite = NonfiniteSteps(
        train.max_nonfinite_steps, f'stopped without saving the last of them (the checkpoints under '
        f'{checkpointer.directory} hold the last finite parameters). Lower train.learning_rate or check the data, '
        'then rerun to resume from the last checkpoint', workdir, step, is_main)
    profiler = StepProfiler(train.profile_range, workdir, enabled=is_main)
    last_flag = None  # the newest step's `nonfinite` flag, read once the next step is queued (or when logged)

    def read_flag() -> None:
      nonlocal last_flag
      if last_flag is not None:
        nonfinite.record(*last_flag)
        last_flag = None

    def log_step(metrics: dict) -> None:
      """Waits for this step (and no later one: the next is not queued yet), so the line's rate covers exactly
      the steps since the last line. Costs one pause of the device per line, while the host queues the next step."""
      metrics = jax.device_get(metrics)
      done_at = time.perf_counter()
      read_flag()  # this step's: its skip counts in the line
      metrics = {k: float(v) for k, v in metrics.items() if k != 'nonfinite'}
      metrics['learning_rate'] = float(schedule(step - 1))
      metrics['skipped_steps'] = nonfinite.total
      log.train(step, metrics, settings.tokens_per_step, done_at)
      summary.update(metrics)

    try:
      while step < stop_at:
        profiler.before(step)  # the step's trace annotation covers its batch too (pretrain/runtime/profiling.py)
        batch = sharding.global_batch_from_local(next(train_iter), trainer.batch_sharding)
        state, metrics = train_step(state, batch)
        profiler.after(metrics)
        step += 1
        read_flag()  # the previous step's (the device has this one queued)
        last_flag = (step, metrics['nonfinite'])
        summary['preempted'] = preemption.reached(step)
        checkpoint_now = step % train.checkpoint_every == 0 or step == stop_at or summary['preempted']
        if step % train.log_every == 0 or checkpoint_now:  # a checkpointed step's line is on disk before its save
          log_step(metrics)
        if step % train.eval_every == 0 or step == steps:
          summary.update(evaluate())
          log.eval(step, {k: v for k, v in summary.items() if k.startswith('eval_')})
          log.reset_clock(step)
        if checkpoint_now:  # (log_step has read this step's flag: K skipped in a row raised before the save)
          # After skipped steps the state is the last finite one with the step counter and data position past them:
          # what the uninterrupted run holds at this step.
          checkpointer.save(step, state, train_iter.get_state(), meta)
          log.reset_clock(step)  # a save's pause is not step time (tools.benchmark measures it)
        if summary['preempted']:
          logging.warning('preempted: stopped at step %d with a checkpoint; rerun the same command to resume', step)
          break
      read_flag()
    finally:
      profiler.close()
      log.close()
    if nonfinite.summary():
      logging.warning('%s', nonfinite.summary())
    summary['skipped_steps'] = nonfinite.total
  summary['step'] = step
  return summary
