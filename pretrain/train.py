"""run(config, workdir): mesh -> data -> state -> jit -> loop -> log / eval / checkpoint.

Rerunning on the same workdir resumes from the newest checkpoint and continues exactly.
"""
import copy
import dataclasses
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from pretrain.data.tokenizers import tokenizer_from_meta
from pretrain.data import pipeline as data_lib
from pretrain import objectives
from pretrain.config_checks import check_batch_split, check_resumable, validate
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime import accelerators
from pretrain.runtime import distributed
from pretrain.model import flops
from pretrain import optim
from pretrain.runtime import sharding
from pretrain.runtime.errors import require
from pretrain.runtime.files import check_writable_dir, write_atomic
from pretrain.runtime.preemption import PreemptionWatch
from pretrain.model.config import ModelConfig
from pretrain.data.tokenizer import Tokenizer
from pretrain.model.heads import LanguageModel
from pretrain.runtime.metrics_log import MetricsLog, eval_metrics, sentence_eval_metrics
from pretrain.nonfinite import NonfiniteSteps
from pretrain.train_step import init_state, make_steps

def _mlm_settings(config, tokenizer: Tokenizer) -> objectives.MlmSettings | None:
  if config.objective != 'mlm':
    return None
  return objectives.MlmSettings(mask_id=tokenizer.mask_id, special_ids=tuple(tokenizer.special_ids),
                                random_vocab_size=tokenizer.vocab_size, mask_prob=config.mlm.mask_prob,
                                mask_token_prob=config.mlm.mask_token_prob,
                                random_token_prob=config.mlm.random_token_prob,
                                word_starts=(tuple(tokenizer.word_starts().tolist())
                                             if config.mlm.whole_word_masking else None))


def tokens_per_step(config) -> int:
  return config.train.batch_size * config.data.seq_len


def train_state_shardings(abstract_state: dict, param_shardings: dict, optimizer, mesh) -> dict:
  """Optimizer moments are laid out like their parameters; scalars are replicated."""
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_shardings = optax.tree_map_params(optimizer, lambda _, s: s, abstract_state['opt_state'], param_shardings,
                                        transform_non_params=lambda _: replicated,
                                        is_leaf=lambda x: isinstance(x, NamedSharding))
  return {'step': replicated, 'params': param_shardings, 'opt_state': opt_shardings, 'rng': replicated}


@dataclasses.dataclass
class Trainer:
  """Everything compiled for one (config, mesh): the sharded state layout and the jitted steps."""
  graphdef: nnx.GraphDef
  state_shardings: dict
  batch_sharding: NamedSharding
  abstract_state: dict  # ShapeDtypeStructs carrying the shardings: the restore target
  init: Callable[[], dict]  # -> a fresh train state, initialised directly sharded
  train_step: Callable[[dict, dict], tuple[dict, dict]]  # donates the state
  grads_step: Callable[[dict, dict], tuple[dict, dict]]  # (state, batch) -> (mean-loss gradients, loss sums)
  eval_step: Callable[..., dict]


def make_trainer(config, model_cfg: ModelConfig, mesh, tokenizer: Tokenizer) -> Trainer:
  """Call inside sharding.use_mesh_and_rules(mesh, rules)."""
  rules = tuple(config.sharding_rules)
  optimizer = optim.make_optimizer(config.train)
  build_model = lambda: LanguageModel(model_cfg, nnx.Rngs(config.seed))
  graphdef, abstract_params = nnx.split(nnx.eval_shape(build_model))
  param_shardings = nnx.to_pure_dict(sharding.state_shardings(abstract_params, mesh, rules))
  abstract_state = jax.eval_shape(lambda: init_state(build_model(), optimizer, config.seed))
  state_shardings = train_state_shardings(abstract_state, param_shardings, optimizer, mesh)
  step_fns = make_steps(graphdef, optimizer, config.objective, _mlm_settings(config, tokenizer),
                        microbatches=config.train.microbatches)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  return Trainer(
      graphdef=graphdef, state_shardings=state_shardings, batch_sharding=batch_sharding,
      abstract_state=jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                  abstract_state, state_shardings),
      init=jax.jit(lambda: init_state(build_model(), optimizer, config.seed), out_shardings=state_shardings),
      train_step=jax.jit(step_fns.train, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(state_shardings, None), donate_argnums=0),
      grads_step=jax.jit(step_fns.grads, in_shardings=(state_shardings, batch_sharding),
                         out_shardings=(param_shardings, None)),
      eval_step=jax.jit(step_fns.eval))


def batch_abstract(config, trainer: Trainer) -> dict[str, jax.ShapeDtypeStruct]:
  """One global batch's arrays (int32, laid out by trainer.batch_sharding): what the train step compiles for.
  Sentence pairs (mlm.sentence_task) add token_types and one label per example ([batch, 1])."""
  rows = (config.train.batch_size, config.data.seq_len)
  shapes = dict.fromkeys(('tokens', 'segment_ids', 'positions'), rows)
  if config.mlm.sentence_task != 'none':
    shapes.update(token_types=rows, sentence_labels=(config.train.batch_size, 1))
  return {k: jax.ShapeDtypeStruct(shape, jnp.int32, sharding=trainer.batch_sharding) for k, shape in shapes.items()}


def _init_params(config, trainer: Trainer, fresh_params: dict) -> dict:
  """init_checkpoint's parameters; a sentence head it lacks (an MLM-only or imported checkpoint) stays fresh."""
  _, meta = checkpoint_lib.read_checked_meta(config.init_checkpoint, 'init_checkpoint')
  target = dict(trainer.abstract_state['params'])
  if 'sentence_head' in target and meta['config'].get('mlm', {}).get('sentence_task', 'none') == 'none':
    del target['sentence_head']
    logging.info('init_checkpoint has no sentence head: it starts freshly initialised')
  return {**fresh_params, **checkpoint_lib.restore_params(config.init_checkpoint, target)}


# What an init_checkpoint fixes: the parameter shapes and the numerics of the architecture.
ARCHITECTURE_FIELDS = ('variant', 'vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'mlp_dim',
                       'max_position_embeddings', 'type_vocab_size', 'layer_norm_eps')


def _with_init_checkpoint(config):
  """config.init_checkpoint set: a copy of config with the checkpoint's architecture, and its tokenizer."""
  if not config.init_checkpoint:
    return config, None
  _, meta = checkpoint_lib.read_checked_meta(config.init_checkpoint, 'init_checkpoint')
  saved = meta['config']['model']
  config = copy.deepcopy(config)
  for field in ARCHITECTURE_FIELDS:
    config.model[field] = saved[field]
  return config, tokenizer_from_meta(meta)


def _build_data(config, tokenizer) -> data_lib.DataPipeline:
  """This process's data. Every process must tokenize alike: when the tokenizer is made from the data (trained on
  it, or read from a prepared directory), process 0 makes it and sends it to the others."""
  build = lambda tokenizer: data_lib.build_data(config, process_index=jax.process_index(),
                                                process_count=jax.process_count(), tokenizer=tokenizer)
  if jax.process_count() == 1 or tokenizer is not None or config.data.tokenizer:
    return build(tokenizer)
  data = build(None) if jax.process_index() == 0 else None
  meta = distributed.broadcast_json({'tokenizer': data.tokenizer.to_meta()} if data is not None else None)
  return data or build(tokenizer_from_meta(meta))


def run(config, workdir: str) -> dict:
  """Pretrains (or resumes) per `config` in `workdir`; returns the last train and eval metrics.

  config.init_checkpoint (any checkpoint: an import from Hugging Face, another run) starts a new run from its
  parameters, with its architecture and tokenizer; the optimizer and the data start fresh.

  SIGTERM finishes the current step, saves a checkpoint and returns (summary['preempted'] is True).
  """
  require('://' not in str(workdir), f'--workdir: {workdir} is a URL; use a path on a filesystem every host mounts '
          '(NFS, Filestore, or a bucket mounted with gcsfuse)')
  config, init_tokenizer = _with_init_checkpoint(config)
  model_cfg = validate(config)
  workdir = str(check_writable_dir(workdir, '--workdir'))
  with PreemptionWatch() as preemption:
    return _run(config, model_cfg, workdir, init_tokenizer, preemption)


def _run(config, model_cfg: ModelConfig, workdir: str, init_tokenizer, preemption: PreemptionWatch) -> dict:
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(config.sharding_rules)
  data_parallel = sharding.data_parallel_size(mesh, rules)
  check_batch_split(config, data_parallel)
  is_main = jax.process_index() == 0

  newest = checkpoint_lib.newest_meta(pathlib.Path(workdir) / 'checkpoints')  # read only: nothing is created yet
  latest = newest[0] if newest else None
  tokenizer = init_tokenizer
  if newest is not None:  # the tokenizer travels with the checkpoint
    saved_meta = newest[1]
    check_resumable(config, saved_meta['config'], pathlib.Path(workdir) / 'checkpoints' / str(latest))
    tokenizer = tokenizer_from_meta(saved_meta)
  data = _build_data(config, tokenizer)
  tokenizer = data.tokenizer
  meta = checkpoint_lib.make_meta(config, tokenizer)
  if is_main:
    tokenizer.save(pathlib.Path(workdir) / tokenizer.file_name)
    write_atomic(pathlib.Path(workdir) / 'config.json', config.to_json_best_effort(indent=2))
  checkpointer = checkpoint_lib.Checkpointer(workdir, keep=config.train.keep_checkpoints)
  try:
    summary = _train(config, model_cfg, workdir, mesh, data, latest, checkpointer, meta, preemption)
    checkpointer.close()  # waits for the last save to commit
  except BaseException:
    checkpointer.abandon()
    raise
  return summary


def _train(config, model_cfg: ModelConfig, workdir: str, mesh, data: data_lib.DataPipeline, latest: int | None,
           checkpointer: checkpoint_lib.Checkpointer, meta: dict, preemption: PreemptionWatch) -> dict:
  """Restores or initialises the state, compiles, and runs the loop with its logs, evals and checkpoints."""
  rules = tuple(config.sharding_rules)
  tokenizer = data.tokenizer
  is_main = jax.process_index() == 0
  schedule = optim.learning_rate_schedule(config.train)
  steps = config.train.steps
  stop_at = min(steps, config.train.stop_at_step or steps)

  with sharding.use_mesh_and_rules(mesh, rules):
    trainer = make_trainer(config, model_cfg, mesh, tokenizer)
    train_iter = data.train_iterator()
    if latest is not None:
      latest, state, data_state = checkpointer.restore_newest(trainer.abstract_state, latest)
      train_iter.set_state(data_state)
      logging.info('resumed from %s at step %d', checkpointer.directory / str(latest), latest)
    else:
      state = trainer.init()
      if config.init_checkpoint:
        state['params'] = _init_params(config, trainer, state['params'])
        logging.info('initialised the parameters from %s', config.init_checkpoint)
    num_params = sum(x.size for x in jax.tree.leaves(state['params']))
    logging.info('model: %s, %s parameters; mesh %s; global batch %d x %d tokens', model_cfg.variant,
                 f'{num_params:,}', dict(mesh.shape), config.train.batch_size, config.data.seq_len)

    start = time.perf_counter()
    train_step = trainer.train_step.lower(state, batch_abstract(config, trainer)).compile()
    compile_s = time.perf_counter() - start
    logging.info('compiled the train step in %.1f s', compile_s)
    eval_set = [sharding.global_batch_from_local(b, trainer.batch_sharding)
                for b in data.eval_batches(config.train.eval_batches)]

    def evaluate() -> dict:
      # Fetched batch by batch (summed on the host): one eval program in flight at a time.
      sums = [jax.device_get(trainer.eval_step(state['params'], state['rng'], b, i)) for i, b in enumerate(eval_set)]
      totals = {k: sum(float(s[k]) for s in sums) for k in sums[0]} if sums else {}
      return {**eval_metrics(float(totals.get('loss_sum', 0.0)), float(totals.get('correct_sum', 0.0)),
                             float(totals.get('weight_sum', 0.0)), config.objective),
              **sentence_eval_metrics(totals)}

    step = int(jax.device_get(state['step']))
    accelerator = accelerators.detect(jax.devices()[0].device_kind)
    log = MetricsLog(workdir, steps, step, enabled=is_main,
                     flops_per_token=flops.config_flops_per_token(config, model_cfg),
                     peak_flops_per_s=accelerator.peak_flops_per_s * jax.device_count() if accelerator else None,
                     num_devices=jax.device_count())
    summary = {'compile_s': compile_s, 'preempted': False}
    pending = []  # a log step's metrics, fetched once the next step is queued: the device never waits on the host
    nonfinite = NonfiniteSteps(config.train.max_nonfinite_steps, str(checkpointer.directory))
    last_flag = None  # the newest step's `nonfinite` flag, read once the next step is queued (or before a save)

    def log_pending() -> None:
      for logged_step, metrics in pending:
        metrics = {k: float(v) for k, v in jax.device_get(metrics).items() if k != 'nonfinite'}
        if config.objective == 'clm':
          metrics.pop('accuracy')
        metrics['learning_rate'] = float(schedule(logged_step - 1))
        metrics['skipped_steps'] = nonfinite.total
        log.train(logged_step, metrics, tokens_per_step(config))
        summary.update(metrics)
      pending.clear()

    def read_flag() -> None:
      nonlocal last_flag
      if last_flag is not None:
        nonfinite.record(*last_flag)
        last_flag = None

    try:
      while step < stop_at:
        batch = sharding.global_batch_from_local(next(train_iter), trainer.batch_sharding)
        state, metrics = train_step(state, batch)
        step += 1
        read_flag()
        last_flag = (step, metrics['nonfinite'])
        log_pending()
        if step % config.train.log_every == 0 or step == stop_at:
          pending.append((step, metrics))
        if step % config.train.eval_every == 0 or step == steps:
          log_pending()
          summary.update(evaluate())
          log.eval(step, {k: v for k, v in summary.items() if k.startswith('eval_')})
          log.reset_clock(step)
        summary['preempted'] = preemption.reached(step)
        saved = False
        if step % config.train.checkpoint_every == 0 or step == stop_at or summary['preempted']:
          read_flag()
          if nonfinite.in_a_row:  # the state is the last good one, but its step counter says otherwise
            logging.warning('step %d: no checkpoint after a non-finite step', step)
          else:
            checkpointer.save(step, state, train_iter.get_state(), meta)
            saved = True
        if summary['preempted']:
          logging.warning('preempted: stopped at step %d %s; rerun the same command to resume', step,
                          'with a checkpoint' if saved else 'without one (a non-finite step)')
          break
      read_flag()
      log_pending()
    finally:
      log.close()
  summary['step'] = step
  return summary
