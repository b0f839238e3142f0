"""run(config, workdir): checks -> data -> model (encoder restored params-only) -> epochs (loop.py) -> results.

Trains for train.epochs, evaluates every dev split after each epoch, keeps the parameters of the best epoch
(by the task's headline metric on its first dev split) and writes results.json and predictions from them,
and those parameters as a checkpoint (WORKDIR/checkpoints/STEP: exportable, or an init_checkpoint). An earlier
run's results.json in the workdir is removed at the start: it is this run's or absent. results.json reports
skipped_steps (non-finite, see loop.py), and preempted / stopped_at_step of total_steps.
"""
import dataclasses
import json
import pathlib
import shutil
from typing import Callable

import jax
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from finetune import checks, defaults, loop
from finetune import class_weights as class_weights_lib
from finetune.prepared import INPUTS, TARGETS, PreparedTask
from finetune.steps import make_steps
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain import optim
from pretrain.runtime import sharding
from pretrain.runtime.errors import require
from pretrain.runtime.files import write_atomic
from pretrain.runtime.metrics_log import MetricsLog
from pretrain.runtime.preemption import PreemptionWatch
from pretrain.model.heads import Classifier
from pretrain.trainer import shard_state


def _take(arrays: dict, index: np.ndarray, size: int, keys) -> dict:
  """Rows `index` of `keys`, padded to `size` rows of weight 0."""
  padded = np.concatenate([index, np.zeros(size - len(index), index.dtype)])
  batch = {k: arrays[k][padded] for k in keys}
  batch['weights'] = (np.arange(size) < len(index)).astype(np.float32)
  return batch


@dataclasses.dataclass
class Compiled:
  state: dict  # the train state, initialised sharded; the encoder restored unless from_scratch
  train_step: Callable[[dict, dict], tuple[dict, dict]]  # donates the state
  predict_step: Callable[[dict, dict], jax.Array]  # (params, inputs) -> replicated outputs
  to_device: Callable[[dict], dict]  # a host batch (every process holds all of it) -> global arrays
  train_keys: tuple[str, ...]  # the arrays a train batch takes (INPUTS and the targets)


def _compile(config, pretrained: checks.Pretrained, task: PreparedTask, mesh, rules, optimizer,
             class_weights: np.ndarray | None = None) -> Compiled:
  """Call inside sharding.use_mesh_and_rules(mesh, rules)."""
  build_model = lambda: Classifier(pretrained.model_cfg, task.num_outputs, nnx.Rngs(config.seed), config.pooling,
                                   outputs=task.outputs)
  layout = shard_state(build_model, optimizer, config.seed, mesh, rules)
  graphdef, param_shardings, state_shardings = layout.graphdef, layout.param_shardings, layout.state_shardings
  state = layout.init()
  if not config.from_scratch:  # the fresh Adam moments are zeros either way
    abstract = layout.abstract_state['params']
    target = {'encoder': abstract['encoder']}
    if 'pooled_transform' in abstract:  # modernbert: the classifier's transform starts as the MLM head's
      target['mlm_head'] = abstract['pooled_transform']
    restored = checkpoint_lib.restore_params(pretrained.checkpoint, target)
    state['params']['encoder'] = restored['encoder']
    if 'mlm_head' in restored:
      state['params']['pooled_transform'] = restored['mlm_head']
    logging.info('restored the encoder from %s', pretrained.checkpoint)

  rows_2d = sharding.batch_sharding(mesh, rules)
  rows_1d = NamedSharding(mesh, sharding.logical_to_spec(('batch',), rules))
  train_keys = tuple(k for k in task.train if k in INPUTS or k in TARGETS)
  train_shardings = {k: rows_2d if task.train[k].ndim == 2 else rows_1d for k in train_keys}
  train_shardings['weights'] = rows_1d
  input_shardings = {k: rows_2d for k in INPUTS}
  steps = make_steps(graphdef, optimizer, task.outputs, task.is_regression, class_weights)
  return Compiled(
      state=state,
      train_step=jax.jit(steps.train, in_shardings=(state_shardings, train_shardings),
                         out_shardings=(state_shardings, None), donate_argnums=0),
      predict_step=jax.jit(steps.predict, in_shardings=(param_shardings, input_shardings),
                           out_shardings=NamedSharding(mesh, PartitionSpec())),
      to_device=lambda batch: sharding.global_batch_from_host(
          batch, {k: train_shardings.get(k, rows_2d) for k in batch}),
      train_keys=train_keys)


def run(config, workdir: str) -> dict:
  """Fine-tunes per `config` in `workdir`; returns the results written to workdir/results.json.

  SIGTERM stops after the current step: results.json (with "preempted": true), the predictions and the checkpoint
  are then those of the best epoch finished so far, or, before the first finished, nothing is written and the
  returned dict holds only task, preempted and stopped_at_step.
  """
  with PreemptionWatch() as preemption:
    return _run(config, workdir, preemption)


def _run(config, workdir: str, preemption: PreemptionWatch) -> dict:
  task_kind = checks.validate(config)
  pretrained = checks.load_pretrained(config)
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(config.sharding_rules)
  data_parallel = sharding.data_parallel_size(mesh, rules)
  for key in ('batch_size', 'eval_batch_size'):
    require(config.train[key] % data_parallel == 0, f'train.{key}: {config.train[key]} is not divisible by the '
            f'data-parallel size {data_parallel} (mesh.data * mesh.fsdp)')
  workdir_path = pathlib.Path(workdir).absolute()
  newest = checkpoint_lib.newest_meta(workdir_path / 'checkpoints')
  require(newest is None or 'classifier' in newest[1], f'--workdir: {workdir_path} holds checkpoints that are not '
          f'fine-tuned (step {newest and newest[0]}), which this run would replace; use another --workdir')
  workdir_path.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:  # results.json is this run's or absent
    (workdir_path / 'results.json').unlink(missing_ok=True)

  task = task_kind.prepare(config, pretrained.tokenizer)
  class_weights = class_weights_lib.resolve(config.train.class_weights, task.labels, task.train_label_counts)
  num_train = task.num_train_rows
  batch_size = config.train.batch_size
  steps_per_epoch = -(-num_train // batch_size)
  total_steps = config.train.epochs * steps_per_epoch
  hidden_size = pretrained.model_cfg.hidden_size  # train.learning_rate 0: the rate for this width (defaults.py)
  optimizer_settings = checks.optimizer_settings(config.train, total_steps, hidden_size)
  logging.info('learning rate %s', defaults.describe(config.train.learning_rate, hidden_size))
  if class_weights is not None:
    logging.info('class weights (train.class_weights %r): %s', config.train.class_weights,
                 ', '.join(f'{label} {w:.3g}' for label, w in zip(task.labels, class_weights)))
  optimizer, schedule = optim.make_optimizer(optimizer_settings), optim.learning_rate_schedule(optimizer_settings)

  with sharding.use_mesh_and_rules(mesh, rules):
    compiled = _compile(config, pretrained, task, mesh, rules, optimizer, class_weights)
    to_device = compiled.to_device

    def predict(params, split_arrays: dict) -> np.ndarray:
      n, size = len(split_arrays['tokens']), config.train.eval_batch_size
      batches = (to_device(_take(split_arrays, np.arange(i, min(i + size, n)), size, INPUTS))
                 for i in range(0, n, size))
      return np.concatenate([np.asarray(compiled.predict_step(params, {k: b[k] for k in INPUTS}))
                             for b in batches])[:n]

    def evaluate(params) -> tuple[dict, dict]:
      return task.evaluate({key: predict(params, arrays) for key, arrays in task.dev.items()})

    shuffle = np.random.default_rng(config.seed)

    def train_batches():
      order = shuffle.permutation(num_train)
      for i in range(steps_per_epoch):
        rows = order[i * batch_size:(i + 1) * batch_size]
        yield to_device(_take(task.train, rows, batch_size, compiled.train_keys))

    num_params = sum(x.size for x in jax.tree.leaves(compiled.state['params']))
    logging.info('%s: %d train examples in %d rows, padded to %d tokens; %s parameters; %d epochs x %d steps of %d',
                 task.name, task.num_train_examples, num_train, task.length, f'{num_params:,}', config.train.epochs,
                 steps_per_epoch, batch_size)
    headline_split, headline = task.headline
    log = MetricsLog(str(workdir_path), total_steps, 0, enabled=is_main)
    try:
      epochs = loop.train_epochs(compiled.state, compiled.train_step, train_batches, steps_per_epoch, evaluate,
                                 lambda scores: scores[headline_split][headline], config.train, schedule, log,
                                 batch_size * task.length, preemption)
    finally:
      log.close()
    if epochs.best_epoch is None:
      logging.warning('preempted: stopped at step %d of %d, before the first epoch finished: no results written; '
                      'rerun to fine-tune', epochs.step, total_steps)
      return {'task': task.name, 'preempted': True, 'stopped_at_step': epochs.step}
    test_outputs = {key: predict(epochs.best_params, arrays) for key, arrays in task.test.items()}
    checkpoint_dir = _save_best(workdir_path, epochs.best_step, epochs.best_params,
                                classifier_meta(config, pretrained, task)) if config.save_checkpoint else None

  best = epochs.history[epochs.best_epoch - 1]
  results = {'task': task.name, **{k: best[k] for k in task.dev}, 'best_epoch': epochs.best_epoch,
             'epochs': epochs.history, **task.extra_results, 'seed': config.seed,
             'init_checkpoint': None if config.from_scratch else pretrained.checkpoint,
             'checkpoint': checkpoint_dir and str(checkpoint_dir), 'num_train_examples': task.num_train_examples,
             'num_train_rows': num_train, 'learning_rate': optimizer_settings.learning_rate,
             'class_weights': None if class_weights is None else dict(zip(task.labels, class_weights.tolist())),
             'padded_length': task.length, 'train_seconds': round(epochs.seconds, 1),
             'skipped_steps': epochs.skipped_steps, 'preempted': epochs.preempted, 'stopped_at_step': epochs.step,
             'total_steps': total_steps}
  if is_main:
    (workdir_path / 'predictions').mkdir(exist_ok=True)
    results.update(task.write(workdir_path, epochs.best_predictions, test_outputs) or {})
    write_atomic(workdir_path / 'results.json', json.dumps(results, indent=2) + '\n')
  if epochs.preempted:
    logging.warning('preempted: stopped at step %d of %d; results.json, predictions and checkpoint are of epoch %d, '
                    'the best of %d finished; rerun to train all %d epochs', epochs.step, total_steps,
                    epochs.best_epoch, len(epochs.history), config.train.epochs)
  logging.info('%s: best epoch %d, %s', task.name, epochs.best_epoch,
               task.summary({k: best[k] for k in task.dev}))
  return results


def _save_best(workdir: pathlib.Path, step: int, params: dict, meta: dict) -> pathlib.Path:
  """save_params keeps only the newest step under workdir/checkpoints: an earlier run's newer step goes first."""
  if jax.process_index() == 0:
    for old in (workdir / 'checkpoints').glob('*'):
      if old.name.isdigit() and int(old.name) > step:
        shutil.rmtree(old)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices('finetune: stale checkpoints removed')
  return checkpoint_lib.save_params(workdir, step, params, meta)


def classifier_meta(config, pretrained: checks.Pretrained, task: PreparedTask) -> dict:
  """The meta item of the fine-tuned checkpoint: the run's config with the full architecture, the tokenizer,
  and what the head predicts (pretrain.model.load reads it; tools.convert_checkpoint exports it)."""
  config_dict = json.loads(config.to_json_best_effort())
  config_dict['model'] = dataclasses.asdict(pretrained.model_cfg)
  return checkpoint_lib.make_meta(config_dict, pretrained.tokenizer, classifier={
      'task': task.name, 'num_labels': task.num_outputs, 'labels': list(task.labels),
      'is_regression': task.is_regression, 'pooling': config.pooling, 'outputs': task.outputs})
