"""Tiny pretraining checkpoints made by the real trainer, shared by the conversion, fine-tuning and tool tests."""
import fcntl
import pathlib
import shutil

from pretrain import train
from tests.helpers import tiny_config

# What "trained" means for a parity test: weights far from their near-zero initialisation, so that the MLP's
# pre-activations reach the range where an erf and a tanh GELU differ (a swap then shows in the logits).
TRAINED = {'steps': 30, 'learning_rate': 3e-2}


def pretrain_config(kind: str = 'mlm', steps: int = 3, learning_rate: float | None = None):
  """The config of pretrain_checkpoint's run: tests.helpers.tiny_config(kind) (mlm, clm or llama), no dropout.

  steps=0 keeps the random initialisation: one step whose learning rate is 0 (the first warmup step).
  """
  config = tiny_config(kind)
  config.model.dropout_rate = 0.0
  config.train.steps = max(steps, 1)
  config.train.warmup_steps = 1 if steps == 0 else 1 + steps // 2
  if learning_rate is not None:
    config.train.learning_rate = learning_rate
  config.train.log_every = 1
  config.train.eval_every = 1000
  config.train.eval_batches = 1
  config.train.checkpoint_every = 1000
  return config


def pretrain_checkpoint(workdir: pathlib.Path, kind: str = 'mlm', steps: int = 3,
                        learning_rate: float | None = None) -> pathlib.Path:
  """The workdir of a real `steps`-step run of pretrain_config(kind, steps, learning_rate) on the built-in corpus."""
  train.run(pretrain_config(kind, steps, learning_rate), str(workdir))
  return workdir


class CheckpointFactory:
  """Each distinct (kind, steps, learning_rate) is trained once and then reused, also across the processes
  of a pytest-xdist run that share `root`: a lock file per checkpoint, and a `done` marker once it is whole."""

  def __init__(self, root: pathlib.Path):
    self.root = root

  def __call__(self, kind: str = 'mlm', steps: int = 3, learning_rate: float | None = None) -> pathlib.Path:
    name = f'{kind}-{steps}' + (f'-lr{learning_rate:g}' if learning_rate is not None else '')
    workdir = self.root / name
    with open(self.root / f'{name}.lock', 'w') as lock:
      fcntl.flock(lock, fcntl.LOCK_EX)
      if not (self.root / f'{name}.done').exists():
        shutil.rmtree(workdir, ignore_errors=True)  # what a crashed maker left
        pretrain_checkpoint(workdir, kind, steps, learning_rate)
        (self.root / f'{name}.done').touch()
    return workdir

  def trained(self, kind: str) -> pathlib.Path:
    return self(kind, **TRAINED)
