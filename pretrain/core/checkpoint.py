"""Orbax checkpoints: async, keep-N, under WORKDIR/checkpoints/STEP/ with three items:

  state  params, optimizer state, step and RNG (sharded arrays; restorable onto any mesh)
  data   the input pipeline's iterator state (JSON)
  meta   the config and the tokenizer (JSON), so a checkpoint is self-contained

`restore_params` is the cheap params-only path used by finetune and the tools.
"""
import base64
import json
import logging
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from pretrain.core import hf_tokenizer
from pretrain.core.errors import ConfigError
from pretrain.core.tokenizer import Tokenizer

FORMAT_VERSION = 1


class _NoItemMetadataWarning(logging.Filter):
  """Orbax warns that an item dir has no _CHECKPOINT_METADATA (it lives one level up) whenever we read the
  stored shapes of a step's state item: expected, so dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return 'Metadata file does not exist' not in record.getMessage()


logging.getLogger('absl').addFilter(_NoItemMetadataWarning())


class Checkpointer:
  """A CheckpointManager for one workdir. All processes call save/restore together."""

  def __init__(self, workdir: str | os.PathLike, keep: int = 3, async_save: bool = True):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=('state', 'data', 'meta'))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, meta: dict) -> None:
    """Starts an async save; the arrays are copied off the device before this returns."""
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state), meta=ocp.args.JsonSave(meta)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """abstract_state: ShapeDtypeStructs carrying the target shardings (any mesh)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return restored['state'], restored['data'], restored['meta']

  def restore_meta(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def make_meta(config, tokenizer, **extra) -> dict:
  """config: a ConfigDict or a plain dict. extra: more top-level entries (e.g. a classifier's labels)."""
  config_dict = config if isinstance(config, dict) else json.loads(config.to_json())
  return {'format_version': FORMAT_VERSION, 'config': config_dict, 'tokenizer': tokenizer.to_meta(), **extra}


def load_tokenizer(meta: dict):
  """The tokenizer a checkpoint's meta holds: SentencePiece, or a Hugging Face one (the `hf` extra)."""
  kind = meta['tokenizer'].get('kind')
  if kind == 'sentencepiece':
    return Tokenizer.from_bytes(base64.b64decode(meta['tokenizer']['model_b64']))
  if kind == hf_tokenizer.KIND:
    return hf_tokenizer.HfTokenizer.from_meta(meta['tokenizer'])
  raise ConfigError(f'checkpoint: unknown tokenizer kind {kind!r} in its meta item')


def resolve(path: str | os.PathLike) -> tuple[pathlib.Path, int]:
  """A workdir, its checkpoints/ dir, or one step dir -> (checkpoints dir, step). Latest step if not named."""
  path = pathlib.Path(path).absolute()
  if not path.exists():
    raise ConfigError(f'checkpoint: {path} does not exist')
  if path.name.isdigit() and (path / 'state').exists():
    return path.parent, int(path.name)
  if (path / 'checkpoints').is_dir():
    path = path / 'checkpoints'
  steps = sorted(int(p.name) for p in path.iterdir() if p.name.isdigit() and (p / 'state').exists())
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


def _stored_params(step_dir: pathlib.Path) -> dict:
  metadata = ocp.PyTreeCheckpointer().metadata(step_dir / 'state')
  tree = getattr(metadata, 'item_metadata', metadata)
  return getattr(tree, 'tree', tree)['params']


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
