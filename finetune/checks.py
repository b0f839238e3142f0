"""Checks of a fine-tuning config and its checkpoint that need no data and no compilation.

Each failure is one ConfigError naming the field or file: the task, the data source, the checkpoint (a
path with no checkpoint, a vocabulary or length the checkpoint's model cannot hold), the train settings.
"""
import dataclasses
from types import ModuleType

from finetune import class_weights, defaults, task_kinds
from pretrain.data.tokenizers import tokenizer_from_meta
from pretrain.model.config import ModelConfig, fields_with_role, from_checkpoint_meta, validate_runtime
from pretrain.model.heads import POOLINGS
from pretrain.optim import OptimizerSettings
from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import require


@dataclasses.dataclass(frozen=True)
class Pretrained:
  model_cfg: ModelConfig  # the checkpoint's architecture with this run's dropout/dtype/remat
  tokenizer: object  # pretrain.data.tokenizer.Tokenizer or pretrain.data.hf_tokenizer.HfTokenizer
  checkpoint: str  # the resolved step directory


def validate(config) -> ModuleType:
  """The task's module (finetune/task_kinds.py), once the config is checked."""
  kind = task_kinds.kind_of(config.task)
  require(config.init_checkpoint, 'init_checkpoint: required (a pretraining workdir, its checkpoints/ dir or a '
          'step dir)')
  require(config.pooling in POOLINGS, f'pooling: {config.pooling!r} is not one of {POOLINGS}')
  validate_runtime(config.model)  # the architecture is the checkpoint's, checked in load_pretrained
  require(config.data.max_length >= 4, f'data.max_length: must be at least 4, got {config.data.max_length}')
  require(0 <= config.data.max_malformed_fraction < 1,
          f'data.max_malformed_fraction: must be in [0, 1), got {config.data.max_malformed_fraction}')
  for key in ('epochs', 'batch_size', 'eval_batch_size', 'log_every', 'max_nonfinite_steps'):
    require(config.train[key] > 0, f'train.{key}: must be positive, got {config.train[key]}')
  require(0 <= config.train.warmup_fraction <= 1,
          f'train.warmup_fraction: must be in [0, 1], got {config.train.warmup_fraction}')
  require(config.train.learning_rate >= 0, f'train.learning_rate: must be positive, or 0 for the default of the '
          f"checkpoint's width (finetune/defaults.py), got {config.train.learning_rate}")
  require(config.train.max_train_examples >= 0,
          f'train.max_train_examples: must be >= 0, got {config.train.max_train_examples}')
  class_weights.parse(config.train.class_weights)
  optimizer_settings(config.train, total_steps=1)  # validates the schedule and optimizer fields
  kind.validate_source(config)
  return kind


def optimizer_settings(train_cfg, total_steps: int, hidden_size: int | None = None) -> OptimizerSettings:
  """The optimizer of config.train, with steps and warmup from the epoch count and the learning rate resolved
  for an encoder of `hidden_size` (finetune/defaults.py: train.learning_rate 0 is auto; validated)."""
  return OptimizerSettings.pick(train_cfg, steps=total_steps,
                                warmup_steps=round(train_cfg.warmup_fraction * total_steps),
                                learning_rate=defaults.learning_rate(train_cfg.learning_rate, hidden_size))


def load_pretrained(config) -> Pretrained:
  """The checkpoint's architecture and tokenizer, checked against this config (reads no arrays)."""
  step_dir, meta = checkpoint_lib.read_checked_meta(config.init_checkpoint, 'init_checkpoint')
  model_cfg = from_checkpoint_meta(meta, sentence_head=False,
                                   **{k: config.model[k] for k in fields_with_role('runtime')})
  tokenizer = tokenizer_from_meta(meta)
  require(tokenizer.vocab_size <= model_cfg.vocab_size,
          f'init_checkpoint: its tokenizer has {tokenizer.vocab_size} pieces but model.vocab_size is '
          f'{model_cfg.vocab_size} in {step_dir}')
  require(config.data.max_length <= model_cfg.max_position_embeddings,
          f'data.max_length: {config.data.max_length} exceeds the checkpoint\'s model.max_position_embeddings '
          f'{model_cfg.max_position_embeddings}')
  pairs = task_kinds.kind_of(config.task).uses_pairs(config)
  require(not pairs or model_cfg.type_vocab_size == 0 or model_cfg.type_vocab_size >= 2,
          f'init_checkpoint: {config.task} pairs need 2 token types; the checkpoint\'s model.type_vocab_size is '
          f'{model_cfg.type_vocab_size} in {step_dir}')
  return Pretrained(model_cfg, tokenizer, str(step_dir))
