"""Our real jitted train step (make_trainer, as training builds it) on synthetic tokens: compile time, median
step time, peak memory. Synthetic tokens keep the input pipeline out of the figure (`--input` measures it)."""
import dataclasses
import time

import jax
import numpy as np

from pretrain import objectives
from pretrain.runtime import accelerators, sharding
from pretrain.settings import PretrainSettings, check_batch_split
from pretrain.trainer import Trainer, flops_per_step, make_trainer
from tools.benchmark.timing import StepTiming, time_steps


def synthetic_batch(settings: PretrainSettings, seed: int = 0) -> dict[str, np.ndarray]:
  """One global batch of random tokens: one document per row (sentence pairs: two halves, random labels); the
  arrays the objective's batches hold."""
  rows, length = settings.train.batch_size, settings.data.seq_len
  rng = np.random.default_rng(seed)
  first_id = len(objectives.RESERVED_SPECIAL_IDS)
  batch = {'tokens': rng.integers(first_id, settings.model.vocab_size, (rows, length), dtype=np.int32),
           'segment_ids': np.ones((rows, length), np.int32),
           'positions': np.tile(np.arange(length, dtype=np.int32), (rows, 1)),
           'token_types': (np.arange(length) >= length // 2).astype(np.int32)[None].repeat(rows, 0),
           'sentence_labels': rng.integers(0, 2, (rows, 1), dtype=np.int32)}
  return {k: batch[k] for k in settings.build_objective().batch_shapes(rows, length)}


@dataclasses.dataclass
class StepSetup:
  """Everything one benchmark of our step needs, built as pretrain.train.run builds it."""
  settings: PretrainSettings
  mesh: jax.sharding.Mesh
  trainer: Trainer

  @property
  def tokens_per_step(self) -> int:
    return self.settings.tokens_per_step

  @property
  def flops_per_step(self) -> float:
    return flops_per_step(self.settings)


def build(config) -> StepSetup:
  """Validates the config and builds the trainer; raises ConfigError naming the field before any compile."""
  settings = PretrainSettings.from_config(config)
  mesh = sharding.make_mesh(settings.mesh)
  check_batch_split(settings, sharding.data_parallel_size(mesh, settings.sharding_rules))
  with sharding.use_mesh_and_rules(mesh, settings.sharding_rules):
    trainer = make_trainer(settings, mesh)
  return StepSetup(settings, mesh, trainer)


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
  settings, trainer = setup.settings, setup.trainer
  with sharding.use_mesh_and_rules(setup.mesh, settings.sharding_rules):
    state = trainer.init()
    batch = sharding.global_batch_from_local(process_rows(synthetic_batch(settings)), trainer.batch_sharding)
    start = time.perf_counter()
    step = trainer.train_step.lower(state, trainer.abstract_batch).compile()
    compile_s = time.perf_counter() - start

    def run_step():
      nonlocal state
      state, metrics = step(state, batch)
      jax.block_until_ready(metrics)

    seconds = time_steps(run_step, steps, warmup)
  return StepTiming('ours', seconds, setup.tokens_per_step, setup.flops_per_step, setup.mesh.size, accelerator,
                    compile_s, peak_memory_bytes(step))
