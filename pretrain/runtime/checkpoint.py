"""Orbax checkpoints: async, keep-N, under WORKDIR/checkpoints/STEP/ with three items:

  state  params, optimizer state, step and RNG (sharded arrays; restorable onto any mesh)
  data   the input pipeline's iterator state (JSON)
  meta   the config and the tokenizer (JSON), so a checkpoint is self-contained

A step counts only once Orbax has committed it: written under a temporary name, renamed into place, with
`commit_success.txt` written last. On start, a step directory without that marker (a save cut short, a partial
copy) and a committed step that is known to be corrupt (a torn JSON or metadata file, a truncated or undecodable
array file, a missing file) are moved to WORKDIR/corrupt_checkpoints/ with a warning naming them, and the newest
good step is used. Any other error while reading the newest step (an I/O error, a timeout, a stale file handle, a
permission denied, out of memory, a sharding the arrays cannot be laid out with) stops the run with a RestoreError,
one line naming the step and the error, and moves nothing (pretrain/runtime/restore_errors.py tells them apart).
All processes of a job take the same decision. Keep-N is ours, not Orbax's (which deletes old steps even when the
newer save failed): old steps are deleted only once every save has committed.

`restore_params` is the cheap params-only path used by finetune and the tools.
"""
import contextlib
import gc
import json
import logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from pretrain.runtime import distributed
from pretrain.runtime.errors import ConfigError, JobError
from pretrain.runtime.restore_errors import RestoreError, describe, known_corruption, one_line, os_reason

FORMAT_VERSION = 1
COMMIT_MARKER = 'commit_success.txt'  # Orbax writes it into a step directory last


class CheckpointWriteError(JobError):
  """A checkpoint could not be written (disk full, unwritable directory); earlier checkpoints are intact."""


def committed(step_dir: pathlib.Path) -> bool:
  return (step_dir / COMMIT_MARKER).is_file()


def _outcome(e: BaseException) -> list:
  return ['corrupt' if known_corruption(e) else 'stop', describe(e)]


def _agree(outcome: list | None, step_dir: pathlib.Path, what: str = '') -> list:
  """Every process's outcome of reading a step (None: it read): one collective in multi-process jobs. Raises the
  same RestoreError on every process when any of them met anything but known corruption."""
  outcomes = distributed.allgather_json(outcome)
  for process, found in enumerate(outcomes):
    if found and found[0] == 'stop':
      where = f' on process {process} of {len(outcomes)}' if len(outcomes) > 1 else ''
      raise RestoreError(f'checkpoint: step {step_dir.name} ({step_dir}){what} did not restore{where}: {found[1]}; '
                         'not known corruption, so nothing was moved aside: fix the cause and rerun to resume')
  return outcomes


class _CheckpointManager(ocp.CheckpointManager):
  """Orbax's, without its own preemption checks. The train loop alone asks JAX's preemption sync point, once per
  step (pretrain/runtime/preemption.py), and saves when it says so. Orbax asked it again at each save and, for a
  metric, from its background finalize thread; that concurrent call into JAX's preemption service once left a
  preempted process to abort at exit ('terminate called after throwing', rc -6) after its checkpoint committed."""

  def reached_preemption(self, step: int) -> bool:
    del step
    return False


class Checkpointer:
  """A CheckpointManager for one workdir. All processes call save/restore together."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self.keep = keep
    # Keep-N is ours (_delete_old): Orbax's own deletes old steps even when the newer save failed.
    options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True, enable_async_checkpointing=async_save,
                                           cleanup_tmp_directories=True)  # saves cut short by a kill
    self.manager = _CheckpointManager(self.directory, options=options, item_names=('state', 'data', 'meta'))
    for step in self.manager.all_steps():
      if not committed(self.directory / str(step)):
        self.set_aside(step, f'no commit marker {COMMIT_MARKER} (a save cut short, or a partial copy)')

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def set_aside(self, step: int, reason: str) -> None:
    """Moves an unusable step to WORKDIR/corrupt_checkpoints/ (never deletes it), with a warning naming it."""
    source = self.directory / str(step)
    quarantine = self.directory.parent / 'corrupt_checkpoints'
    target = quarantine / str(step)
    for n in range(1, 1000):
      if not target.exists():
        break
      target = quarantine / f'{step}.{n}'
    logging.warning('checkpoint %s is unusable: %s; moved to %s', source, reason, target)
    if jax.process_index() == 0:
      quarantine.mkdir(exist_ok=True)
      source.rename(target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'checkpoint set aside {step}')
    self.manager.reload()

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts an async save; the arrays are copied off the device before this returns.

    Raises CheckpointWriteError when this or the previous save could not be written."""
    self.wait()  # the previous save has committed (or this raises), so the oldest steps may go
    self._delete_old()
    with self._write_errors():
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """abstract_state: ShapeDtypeStructs carrying the target shardings (any mesh).

    Read through the item handlers, not the CheckpointManager, whose restore ends in a collective barrier that a
    process whose read failed never reaches (the others would then pair it with restore_newest's vote and abort)."""
    step_dir = self.directory / str(step)
    handler = ocp.StandardCheckpointHandler()
    try:
      state = handler.restore(step_dir / 'state', args=ocp.args.StandardRestore(abstract_state))
    finally:
      handler.close()
    data_state, meta = (ocp.JsonCheckpointHandler().restore(step_dir / item) for item in ('data', 'meta'))
    return state, data_state, meta

  def restore_newest(self, abstract_state: Any, newest: int) -> tuple[int, Any, dict]:
    """(step, state, data state) of the newest step <= `newest` that restores whole on every process.

    Known-corrupt steps are set aside once an older one has restored; when none restores, nothing is moved and a
    ConfigError names them all. Any other error stops with a RestoreError (restore_errors.py)."""
    failed = []
    for step in reversed(self.manager.all_steps()):
      if step > newest:  # newest_meta could not read it
        failed.append((step, 'its meta item does not read'))
        continue
      step_dir = self.directory / str(step)
      try:
        _check_shapes(abstract_state['params'], _stored_params(step_dir), step_dir)  # a new config: ConfigError
        (state, data_state, _), outcome = self.restore(step, abstract_state), None
      except ConfigError:
        raise
      except Exception as e:  # pylint: disable=broad-except
        state, data_state, outcome = None, None, _outcome(e)
        gc.collect()  # the failed restore's pending reads are finalised now, not inside some later call
      outcomes = _agree(outcome, step_dir)
      if not any(outcomes):
        for bad_step, reason in failed:
          self.set_aside(bad_step, f'it does not restore ({reason})')
        return step, state, data_state
      failed.append((step, outcome[1] if outcome else 'it does not restore on another process'))
    raise ConfigError(f'checkpoint: no checkpoint under {self.directory} restores ('
                      + '; '.join(f'step {s}: {r}' for s, r in failed)
                      + '); move them away to start afresh in this workdir')

  def wait(self) -> None:
    with self._write_errors():
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self._delete_old()
    with self._write_errors():
      self.manager.close()

  def _delete_old(self) -> None:
    """Deletes all but the newest `keep` steps; call only when no save is in flight (all steps committed)."""
    for step in sorted(self.manager.all_steps())[:-self.keep]:
      self.manager.delete(step)

  def abandon(self) -> None:
    """After an error: lets a save in flight commit (or fail) without raising a second error."""
    try:
      self.manager.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('checkpoint: the save in flight failed as well: %s', one_line(e))

  @contextlib.contextmanager
  def _write_errors(self):
    try:
      yield
    except ConfigError:
      raise
    except (OSError, ValueError, RuntimeError) as e:  # Orbax re-raises a failed background write here
      if not isinstance(e, OSError) and 'os_error_code' not in str(e):
        raise  # not the filesystem (e.g. a collective that failed because another process died)
      good = [s for s in self.manager.all_steps() if committed(self.directory / str(s))]
      raise CheckpointWriteError(
          f'checkpoint: writing to {self.directory} failed ({os_reason(e)}); the committed checkpoints '
          f'(steps {good}) are intact: free space or fix the directory, then rerun to resume') from e


def newest_meta(directory: pathlib.Path) -> tuple[int, dict] | None:
  """(step, meta) of the newest committed step under `directory` whose meta item reads; None if there is none.

  All processes call it. Reads only: a known-corrupt meta item is warned about here (and its step set aside when
  the Checkpointer restores); any other error raises a RestoreError."""
  steps = sorted((int(p.name) for p in directory.glob('*') if p.name.isdigit() and committed(p)), reverse=True)
  for step in steps:
    try:
      meta, outcome = ocp.JsonCheckpointHandler().restore(directory / str(step) / 'meta'), None  # no barrier
    except Exception as e:  # pylint: disable=broad-except
      meta, outcome = None, _outcome(e)
    outcomes = _agree(outcome, directory / str(step), ': its meta item')
    if not any(outcomes):
      return step, meta
    logging.warning('checkpoint %s: its meta item does not read (%s); trying an older step', directory / str(step),
                    outcome[1] if outcome else 'on another process')
  return None


def make_meta(config, tokenizer, **extra) -> dict:
  """config: a ConfigDict or a plain dict. extra: more top-level entries (e.g. a classifier's labels)."""
  config_dict = config if isinstance(config, dict) else json.loads(config.to_json())
  return {'format_version': FORMAT_VERSION, 'config': config_dict, 'tokenizer': tokenizer.to_meta(), **extra}


def resolve(path: str | os.PathLike) -> tuple[pathlib.Path, int]:
  """A workdir, its checkpoints/ dir, or one step dir -> (checkpoints dir, step). Latest step if not named."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise ConfigError(f'checkpoint: {path} does not exist')
  if path.name.isdigit() and (path / 'state').exists():
    if not committed(path):
      raise ConfigError(f'checkpoint: {path} has no commit marker {COMMIT_MARKER} (a save cut short, or a partial '
                        'copy)')
    return path.parent, int(path.name)
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  candidates = [p for p in path.iterdir() if p.name.isdigit() and (p / 'state').exists()]
  for p in candidates:
    if not committed(p):
      logging.warning('checkpoint: skipping %s: no commit marker %s (a save cut short, or a partial copy)', p,
                      COMMIT_MARKER)
  steps = sorted(int(p.name) for p in candidates if committed(p))
  if not steps:
    raise ConfigError(f'checkpoint: no checkpoint steps under {path}')
  return path, steps[-1]


def _step_items(path: str | os.PathLike) -> tuple[pathlib.Path, int]:
  directory, step = resolve(path)
  return directory / str(step), step


def read_meta(path: str | os.PathLike) -> dict:
  """The config and tokenizer stored with a checkpoint (no arrays are read)."""
  step_dir, _ = _step_items(path)
  return ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(step_dir / 'meta')


def read_checked_meta(path: str | os.PathLike, field: str) -> tuple[pathlib.Path, dict]:
  """(step dir, meta) of a checkpoint of this project; every failure is a ConfigError naming `field`."""
  try:
    step_dir, _ = _step_items(path)
    meta = read_meta(step_dir)
  except ConfigError as e:
    raise ConfigError(f"{field}: {str(e).removeprefix('checkpoint: ')}") from None
  except Exception as e:  # pylint: disable=broad-except  # a torn or foreign checkpoint
    raise ConfigError(f'{field}: {path} has no readable meta item ({type(e).__name__}: {e})') from None
  if 'tokenizer' not in meta or 'model' not in meta.get('config', {}):
    raise ConfigError(f'{field}: {step_dir} holds no model config and tokenizer (not a checkpoint of this '
                      'project)')
  return step_dir, meta


def stored_state(step_dir: pathlib.Path) -> dict:
  """The stored tree of a step's state item (shapes and dtypes, no arrays read). Read through the handler: the
  Checkpointer would log and swallow a failed read (an I/O error as well as a torn file)."""
  handler = ocp.PyTreeCheckpointHandler()
  try:
    metadata = handler.metadata(step_dir / 'state')
  finally:
    handler.close()
  return getattr(metadata, 'tree', metadata)


def _stored_params(step_dir: pathlib.Path) -> dict:
  return stored_state(step_dir)['params']


def _check_shapes(abstract_params: Any, stored: dict, step_dir: pathlib.Path) -> None:
  """Every wanted parameter is in the checkpoint with the same shape, else one error naming it."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_params):
    keys = [str(getattr(k, 'key', k)) for k in path]
    node = stored
    for key in keys:
      node = node.get(key) if isinstance(node, dict) else None
    name = '.'.join(keys)
    if node is None:
      raise ConfigError(f'checkpoint: {step_dir} has no parameter {name} (a different architecture)')
    if tuple(node.shape) != tuple(leaf.shape):
      raise ConfigError(f'checkpoint: parameter {name} has shape {tuple(node.shape)} in {step_dir}, '
                        f'the model wants {tuple(leaf.shape)}')


def restore_params(path: str | os.PathLike, abstract_params: Any) -> Any:
  """Only the parameters, placed as abstract_params' shardings say (any mesh, any device count).

  abstract_params may be a subtree (e.g. {'encoder': ...}); shapes are checked before anything is read.
  """
  step_dir, _ = _step_items(path)
  _check_shapes(abstract_params, _stored_params(step_dir), step_dir)
  restore_args = jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding), abstract_params)
  restored = ocp.PyTreeCheckpointer().restore(step_dir / 'state', args=ocp.args.PyTreeRestore(
      item={'params': abstract_params}, restore_args={'params': restore_args}, partial_restore=True))
  return restored['params']


def save_params(workdir: str | os.PathLike, step: int, params: Any, meta: dict) -> pathlib.Path:
  """A params-only checkpoint (finetune results, imports) under WORKDIR/checkpoints/STEP; replaces that step.

  All processes call it. Orbax writes the step to a temporary directory and renames it when complete.
  """
  checkpointer = Checkpointer(workdir, keep=1, async_save=False)
  if step in checkpointer.manager.all_steps():
    checkpointer.manager.delete(step)
  checkpointer.save(step, {'params': params}, {}, meta)
  checkpointer.close()
  return checkpointer.directory / str(step)
