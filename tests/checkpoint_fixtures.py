"""Tiny pretraining checkpoints made by the real trainer, shared by the conversion and tool tests."""
import pathlib

from pretrain import train
from tests.helpers import tiny_config


def pretrain_checkpoint(workdir: pathlib.Path, objective: str = 'mlm', steps: int = 3) -> pathlib.Path:
  """The workdir of a real `steps`-step run of the tiny config on the built-in corpus (no dropout).

  steps=0 keeps the random initialisation: one step whose learning rate is 0 (the first warmup step).
  """
  config = tiny_config(objective)
  config.model.dropout_rate = 0.0
  config.train.steps = max(steps, 1)
  config.train.warmup_steps = 1 if steps == 0 else 1 + steps // 2
  config.train.log_every = 1
  config.train.eval_every = 1000
  config.train.eval_batches = 1
  config.train.checkpoint_every = 1000
  train.run(config, str(workdir))
  return workdir
