"""Our real jitted train step (make_trainer, as training builds it) on synthetic tokens: compile time, median
step time, peak memory. Synthetic tokens keep the input pipeline out of the figure (`--input` measures it)."""
import dataclasses
import time

import jax
import numpy as np

from pretrain.config_checks import check_batch_split, validate
from pretrain.runtime import accelerators
from pretrain.model import flops
from pretrain.runtime import sharding
from pretrain.model.config import ModelConfig
from pretrain.train import Trainer, batch_abstract, make_trainer
from tools.benchmark.timing import StepTiming, time_steps
from tools.plan.mesh import SpecialIds


def synthetic_batch(config, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
  """One global batch of random tokens: one document per row (sentence pairs: two halves, random labels)."""
  rows, length = config.train.batch_size, config.data.seq_len
  rng = np.random.default_rng(seed)
  first_id = len(SpecialIds(vocab_size).special_ids)
  batch = {'tokens': rng.integers(first_id, vocab_size, (rows, length), dtype=np.int32),
           'segment_ids': np.ones((rows, length), np.int32),
           'positions': np.tile(np.arange(length, dtype=np.int32), (rows, 1))}
  if config.mlm.sentence_task != 'none':
    batch['token_types'] = (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(rows, 0)
    batch['sentence_labels'] = rng.integers(0, 2, (rows, 1), dtype=np.int32)
  return batch


@dataclasses.dataclass
class StepSetup:
  """Everything one benchmark of our step needs, built as pretrain.train.run builds it."""
  config: object
  model_cfg: ModelConfig
  mesh: jax.sharding.Mesh
  trainer: Trainer

  @property
  def tokens_per_step(self) -> int:
    return self.config.train.batch_size * self.config.data.seq_len

  @property
  def flops_per_step(self) -> float:
    return flops.train_flops_per_step(self.config, self.model_cfg)


def build(config) -> StepSetup:
  """Validates the config and builds the trainer; raises ConfigError naming the field before any compile."""
  model_cfg = validate(config)
  mesh = sharding.make_mesh(config.mesh)
  check_batch_split(config, sharding.data_parallel_size(mesh, tuple(config.sharding_rules)))
  with sharding.use_mesh_and_rules(mesh, tuple(config.sharding_rules)):
    trainer = make_trainer(config, model_cfg, mesh, SpecialIds(model_cfg.vocab_size))
  return StepSetup(config, model_cfg, mesh, trainer)


def peak_memory_bytes(compiled) -> int | None:
  """The device's own peak (GPU, TPU); on CPU, which keeps no statistics, the compiled step's footprint."""
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    return int(max((d.memory_stats() or {}).get('peak_bytes_in_use', 0) for d in jax.local_devices()))
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  return int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes + analysis.temp_size_in_bytes
             - analysis.alias_size_in_bytes)


def process_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """This process's contiguous slice of a global batch's rows (what each host feeds)."""
  rows = len(batch['tokens']) // jax.process_count()
  start = jax.process_index() * rows
  return {k: v[start:start + rows] for k, v in batch.items()}


def measure(setup: StepSetup, steps: int, warmup: int,
            accelerator: accelerators.Accelerator | None = None) -> StepTiming:
  """Compiles the step (timed), then times `steps` steps after `warmup`, each waited for. accelerator: whose
  peak MFU divides by (None: no MFU)."""
  config, trainer = setup.config, setup.trainer
  with sharding.use_mesh_and_rules(setup.mesh, tuple(config.sharding_rules)):
    state = trainer.init()
    batch = sharding.global_batch_from_local(process_rows(synthetic_batch(config, setup.model_cfg.vocab_size)),
                                             trainer.batch_sharding)
    start = time.perf_counter()
    step = trainer.train_step.lower(state, batch_abstract(config, trainer)).compile()
    compile_s = time.perf_counter() - start

    def run_step():
      nonlocal state
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)

    seconds = time_steps(run_step, steps, warmup)
  return StepTiming('ours', seconds, setup.tokens_per_step, setup.flops_per_step, setup.mesh.size, accelerator,
                    compile_s, peak_memory_bytes(step))
