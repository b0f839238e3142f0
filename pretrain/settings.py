"""A pretraining config as frozen, typed settings, checked once before anything is read or compiled.

`PretrainSettings.from_config(config)` turns the ConfigDict of configs/*.py (with its --config.a.b=v overrides)
into one dataclass per section: model (pretrain/model/config.py), mlm (pretrain/objectives.py), data
(pretrain/data/settings.py), train (below), mesh. Every error names the field at fault. The code past this point
reads the settings, never the ConfigDict.

What a checkpoint fixes comes from field metadata, not from a hand-kept list: the model's architecture fields
(role 'architecture'), and the fields marked fixed_by_checkpoint here and in MlmSettings (the objective, the
sentence task). `resume_fields()` names them; `check_resumable` compares them with a checkpoint's meta.
"""
import dataclasses
import json
import re

from pretrain import objectives
from pretrain.data.settings import DataSettings
from pretrain.model.config import ModelConfig, fields_with_role, from_checkpoint_meta
from pretrain.optim import OptimizerSettings, learning_rate_schedule
from pretrain.runtime.errors import require

FIXED = {'fixed_by_checkpoint': True}


@dataclasses.dataclass(frozen=True)
class TrainSettings:
  """config.train: the optimizer (OptimizerSettings' fields) and the loop's schedule of logs, evals, saves."""
  steps: int
  batch_size: int  # global, over all processes
  learning_rate: float
  end_learning_rate_fraction: float
  warmup_steps: int
  schedule: str
  weight_decay: float
  b1: float
  b2: float
  eps: float
  grad_clip_norm: float
  microbatches: int  # gradient accumulation inside one jitted step
  log_every: int
  eval_every: int
  eval_batches: int
  checkpoint_every: int
  keep_checkpoints: int
  stop_at_step: int  # > 0: checkpoint and exit at this step (a time-limited job)
  max_nonfinite_steps: int  # this many skipped (non-finite) steps in a row stop the job
  decay_fraction: float = 0.1  # schedule wsd: the share of the steps its decay takes (pretrain.optim)
  decay_shape: str = '1-sqrt'  # schedule wsd: the decay's shape, optim.DECAY_SHAPES
  loss_chunk_tokens: int = 4096  # tokens per chunk of the output layer + loss (0: all at once)
  profile_steps: str = ''  # 'START:STOP': a jax.profiler trace of steps START..STOP-1 under WORKDIR/profile/

  def __post_init__(self):
    require(self.batch_size > 0, f'train.batch_size: must be positive, got {self.batch_size}')
    require(self.microbatches >= 1, f'train.microbatches: must be >= 1, got {self.microbatches}')
    require(self.batch_size % self.microbatches == 0,
            f'train.microbatches: {self.microbatches} does not divide train.batch_size {self.batch_size}')
    for key in ('log_every', 'eval_every', 'checkpoint_every', 'eval_batches', 'keep_checkpoints',
                'max_nonfinite_steps'):
      require(getattr(self, key) > 0, f'train.{key}: must be positive, got {getattr(self, key)}')
    require(self.stop_at_step >= 0, f'train.stop_at_step: must be >= 0, got {self.stop_at_step}')
    require(isinstance(self.loss_chunk_tokens, int) and self.loss_chunk_tokens >= 0,
            f'train.loss_chunk_tokens: must be an integer >= 0 (0: no chunks), got {self.loss_chunk_tokens!r}')
    self.optimizer  # pylint: disable=pointless-statement  # validates the optimizer fields
    profile = self.profile_range
    require(profile is None or profile[0] < self.steps, f'train.profile_steps: {self.profile_steps!r} starts at or '
            f'after train.steps {self.steps}: no step would be traced')

  @property
  def optimizer(self) -> OptimizerSettings:
    return OptimizerSettings.pick(self)

  @property
  def profile_range(self) -> tuple[int, int] | None:
    """train.profile_steps as (start, stop): trace the steps numbered start..stop-1 (pretrain/runtime/profiling.py);
    None when it is '' (no trace)."""
    if self.profile_steps == '':
      return None
    match = re.fullmatch(r'(\d+):(\d+)', str(self.profile_steps), re.ASCII)
    require(match is not None and int(match[1]) < int(match[2]), f'train.profile_steps: {self.profile_steps!r} is '
            "not 'START:STOP' with integers 0 <= START < STOP (e.g. '100:105'), or '' (no trace)")
    return int(match[1]), int(match[2])


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  objective: str = dataclasses.field(metadata=FIXED)  # objectives.OBJECTIVES
  seed: int
  init_checkpoint: str  # '' or a checkpoint whose parameters, architecture and tokenizer start this run
  model: ModelConfig
  mlm: objectives.MlmSettings
  data: DataSettings
  train: TrainSettings
  mesh: dict  # data, fsdp, tensor: device counts (-1: the rest)
  sharding_rules: tuple  # (logical axis name, mesh axes) pairs

  @classmethod
  def from_config(cls, config, model: ModelConfig | None = None) -> 'PretrainSettings':
    """Every check that needs no data and no compilation; raises ConfigError naming the field.

    model: the architecture to use instead of config.model's (an init_checkpoint's), runtime fields included."""
    require(config.objective in objectives.OBJECTIVES,
            f'objective: {config.objective!r} is not one of {objectives.OBJECTIVES}')
    mlm = objectives.MlmSettings.from_config(config.mlm, config.objective)
    model = model or ModelConfig.from_config(config.model, sentence_head=mlm.sentence_task != 'none')
    settings = cls(objective=config.objective, seed=int(config.seed), init_checkpoint=str(config.init_checkpoint),
                   model=model, mlm=mlm, data=DataSettings.from_config(config.data),
                   train=TrainSettings(**_section(config, 'train', TrainSettings)),
                   mesh={axis: int(size) for axis, size in config.mesh.items()},
                   sharding_rules=tuple(tuple(rule) for rule in config.sharding_rules))
    settings.check_model_fits_objective()
    require(settings.data.seq_len <= model.max_position_embeddings,
            f'data.seq_len: {settings.data.seq_len} exceeds model.max_position_embeddings '
            f'{model.max_position_embeddings}')
    return settings

  def check_model_fits_objective(self) -> None:
    model = self.model
    if self.objective == 'mlm':
      require(not model.causal, "model.causal: objective 'mlm' predicts masked tokens from both sides; a causal "
              'model sees only the left (set model.causal=false, or objective clm)')
    else:
      require(model.causal, "model.causal: objective 'clm' needs a causal model, else every position sees the "
              'token it predicts (set model.causal=true, or objective mlm)')
    if self.mlm.sentence_task != 'none':
      require(model.type_vocab_size >= 2, f"model.type_vocab_size: mlm.sentence_task '{self.mlm.sentence_task}' "
              f'gives the two sentences token types 0 and 1; needs at least 2, got {model.type_vocab_size}')

  def as_config(self) -> dict:
    """The settings laid out as the config they came from (for config.json and a checkpoint's meta)."""
    model = dataclasses.asdict(self.model)
    for name in fields_with_role('objective'):
      model.pop(name)
    return {'objective': self.objective, 'seed': self.seed, 'init_checkpoint': self.init_checkpoint,
            'model': model, 'mlm': dataclasses.asdict(self.mlm), 'data': dataclasses.asdict(self.data),
            'train': dataclasses.asdict(self.train), 'mesh': dict(self.mesh),
            'sharding_rules': [list(rule) for rule in self.sharding_rules]}

  def to_json(self, indent: int | None = None) -> str:
    return json.dumps(self.as_config(), indent=indent)

  def build_objective(self, tokenizer=None):
    """The objective with this run's settings (tokenizer None: the reserved special ids, for planning)."""
    return objectives.build(self.objective, self.mlm, self.model.vocab_size, tokenizer,
                            loss_chunk_tokens=self.train.loss_chunk_tokens)

  def data_arguments(self) -> dict:
    """What pretrain.data.pipeline.build_data takes besides the DataSettings."""
    return {'batch_size': self.train.batch_size, 'vocab_size': self.model.vocab_size, 'seed': self.seed,
            'sentence_task': self.mlm.sentence_task}

  @property
  def tokens_per_step(self) -> int:
    return self.train.batch_size * self.data.seq_len


def _section(config, name: str, cls) -> dict:
  """config.<name> as keyword arguments of cls; a missing field without a default is an error naming it."""
  section = config[name]
  values = {}
  for field in dataclasses.fields(cls):
    if field.name not in section and field.default is not dataclasses.MISSING:
      continue
    require(field.name in section, f'{name}.{field.name}: missing from the config')
    values[field.name] = section[field.name]
  return values


def resume_fields() -> tuple[str, ...]:
  """The dotted config fields a resume must keep: the ones marked fixed_by_checkpoint, and the architecture."""
  fixed = [f.name for f in dataclasses.fields(PretrainSettings) if f.metadata.get('fixed_by_checkpoint')]
  fixed += [f'mlm.{f.name}' for f in dataclasses.fields(objectives.MlmSettings)
            if f.metadata.get('fixed_by_checkpoint')]
  return (*fixed, *(f'model.{name}' for name in fields_with_role('architecture')))


def check_resumable(settings: PretrainSettings, meta: dict, where) -> None:
  """Raises ConfigError naming the first fixed setting in which `settings` differ from a checkpoint's meta
  (written by any version: a field the checkpoint predates counts with its default, the value it trained with)."""
  saved_model = from_checkpoint_meta(meta).architecture()
  for dotted in resume_fields():
    section, _, name = dotted.rpartition('.')
    now = getattr(getattr(settings, section) if section else settings, name)
    if section == 'model':
      then = saved_model[name]
    else:
      saved_section = meta['config'].get(section, {}) if section else meta['config']
      then = saved_section.get(name, _default(section, name))
    require(now == then, f'{dotted}: {now!r} differs from {then!r} in the checkpoint at {where}; '
            'use a new --workdir, or the old setting to resume')


def schedule_change(settings: PretrainSettings, meta: dict, step: int) -> str | None:
  """A warning when the optimizer settings (train.steps, warmup, learning rate, schedule, ...) differ from the
  checkpoint's: the changed fields and the learning rate of the next step (step + 1) before and after. None when
  nothing changed. The resumed run is then not the run the checkpoint's settings would have given."""
  now = settings.train.optimizer
  saved_train = meta['config'].get('train', {})
  # A field the checkpoint predates counts as unchanged.
  then = OptimizerSettings(**{f.name: saved_train.get(f.name, getattr(now, f.name))
                              for f in dataclasses.fields(OptimizerSettings)})
  changed = [f'train.{f.name} {getattr(then, f.name)!r} -> {getattr(now, f.name)!r}'
             for f in dataclasses.fields(OptimizerSettings) if getattr(then, f.name) != getattr(now, f.name)]
  if not changed:
    return None
  before, after = float(learning_rate_schedule(then)(step)), float(learning_rate_schedule(now)(step))
  return (f'resuming from step {step} with a changed schedule: {", ".join(changed)}; the learning rate of step '
          f'{step + 1} is {after:.3g} (the checkpoint\'s settings give {before:.3g}), so this run differs from one '
          'that ran with the new settings from the start')


def _default(section: str, name: str):
  cls = {'': PretrainSettings, 'mlm': objectives.MlmSettings}[section]
  return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def check_batch_split(settings: PretrainSettings, data_parallel: int, where: str = '') -> None:
  """Every microbatch's rows split evenly over the data-parallel devices (mesh.data * mesh.fsdp)."""
  batch, micro = settings.train.batch_size, settings.train.microbatches
  require((batch // micro) % data_parallel == 0,
          f'train.batch_size: {batch} / train.microbatches {micro} = {batch // micro} rows per microbatch is not '
          f'divisible by the data-parallel size {data_parallel} (mesh.data * mesh.fsdp{where})')

