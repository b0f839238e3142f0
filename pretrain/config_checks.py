"""Checks of a pretraining config that need no data and no compilation; each names the field at fault."""
import dataclasses
import json

from pretrain.data import sentence_pairs
from pretrain.data import sources
from pretrain import optim
from pretrain.runtime.errors import require
from pretrain.model.config import ModelConfig

OBJECTIVE_VARIANTS = {'mlm': 'bert', 'clm': 'gpt2'}
# What pretrain.data.pipeline reads: pretrain.data.sources' schemes and prepared:DIR (pretrain.data.prepared.SCHEME, not imported
# here: it loads grain).
SOURCE_SCHEMES = (*sources.SCHEMES, 'prepared')


def validate(config) -> ModelConfig:
  """Every check that needs no data and no compilation; raises ConfigError naming the field."""
  require(config.objective in OBJECTIVE_VARIANTS,
          f'objective: {config.objective!r} is not one of {tuple(OBJECTIVE_VARIANTS)}')
  model_cfg = ModelConfig.from_config(config.model)
  expected = OBJECTIVE_VARIANTS[config.objective]
  require(model_cfg.variant == expected,
          f'model.variant: objective {config.objective!r} needs the {expected!r} variant, got {model_cfg.variant!r}')
  scheme, sep, _ = str(config.data.source).partition(':')
  require(sep and scheme in SOURCE_SCHEMES, f'data.source: unknown scheme in {config.data.source!r} (known: '
          + ', '.join(f'{s}:' for s in SOURCE_SCHEMES) + ')')
  require(config.data.seq_len >= 2, f'data.seq_len: must be at least 2, got {config.data.seq_len}')
  sentence_task = config.mlm.sentence_task
  require(sentence_task in sentence_pairs.TASKS,
          f'mlm.sentence_task: {sentence_task!r} is not one of {sentence_pairs.TASKS}')
  for field, used in (('sentence_task', sentence_task != 'none'),
                      ('whole_word_masking', config.mlm.whole_word_masking)):
    require(not used or config.objective == 'mlm', f"mlm.{field}: needs objective 'mlm', got {config.objective!r}")
  require(config.data.seq_len <= model_cfg.max_position_embeddings,
          f'data.seq_len: {config.data.seq_len} exceeds model.max_position_embeddings '
          f'{model_cfg.max_position_embeddings}')
  require(config.train.batch_size > 0, f'train.batch_size: must be positive, got {config.train.batch_size}')
  require(config.train.microbatches >= 1, f'train.microbatches: must be >= 1, got {config.train.microbatches}')
  require(config.train.batch_size % config.train.microbatches == 0,
          f'train.microbatches: {config.train.microbatches} does not divide train.batch_size {config.train.batch_size}')
  for key in ('log_every', 'eval_every', 'checkpoint_every', 'eval_batches', 'keep_checkpoints',
              'max_nonfinite_steps'):
    require(config.train[key] > 0, f'train.{key}: must be positive, got {config.train[key]}')
  require(config.train.stop_at_step >= 0, f'train.stop_at_step: must be >= 0, got {config.train.stop_at_step}')
  if config.objective == 'mlm':
    m = config.mlm
    require(0 < m.mask_prob < 1, f'mlm.mask_prob: must be in (0, 1), got {m.mask_prob}')
    require(m.mask_token_prob >= 0 and m.random_token_prob >= 0 and m.mask_token_prob + m.random_token_prob <= 1,
            'mlm.mask_token_prob + mlm.random_token_prob: must be non-negative and sum to at most 1')
  optim.make_optimizer(config.train)  # validates the schedule and optimizer settings
  return dataclasses.replace(model_cfg, sentence_head=sentence_task != 'none')


def check_batch_split(config, data_parallel: int, where: str = '') -> None:
  """Every microbatch's rows split evenly over the data-parallel devices (mesh.data * mesh.fsdp)."""
  batch, micro = config.train.batch_size, config.train.microbatches
  require((batch // micro) % data_parallel == 0,
          f'train.batch_size: {batch} / train.microbatches {micro} = {batch // micro} rows per microbatch is not '
          f'divisible by the data-parallel size {data_parallel} (mesh.data * mesh.fsdp{where})')


# Settings a checkpoint fixes: the objective and the parameter shapes. Dropout, dtype, remat, mesh, batch and
# sequence length may change on resume (a second phase at a longer sequence length, say).
RESUME_MUST_MATCH = ('objective', 'model.variant', 'model.vocab_size', 'model.hidden_size', 'model.num_layers',
                     'model.num_heads', 'model.mlp_dim', 'model.max_position_embeddings', 'model.type_vocab_size',
                     'mlm.sentence_task')
# Fields added after checkpoints were written without them: what those checkpoints used.
_SAVED_DEFAULTS = {'mlm.sentence_task': 'none'}


def check_resumable(config, saved: dict, where) -> None:
  """Raises ConfigError naming the first fixed setting in which config differs from a checkpoint's config."""
  current = json.loads(config.to_json_best_effort())
  for dotted in RESUME_MUST_MATCH:
    now, then = current, saved
    for key in dotted.split('.'):
      now, then = now.get(key), (then or {}).get(key)
    then = _SAVED_DEFAULTS.get(dotted) if then is None else then
    require(now == then, f'{dotted}: {now!r} differs from {then!r} in the checkpoint at {where}; '
            'use a new --workdir, or the old setting to resume')
