"""How every benchmark measures: warm-up steps, then N steps each waited for, the median; and the figures made
from it the same way for us and the peers (tokens/s, model TFLOP/s, MFU from pretrain.model.flops)."""
import dataclasses
import statistics
import time
from typing import Callable

from pretrain.runtime.accelerators import Accelerator


def time_steps(run_step: Callable[[], None], steps: int, warmup: int) -> list[float]:
  """Seconds of each of `steps` calls of run_step (which runs one step and waits for its result), after
  `warmup` untimed calls."""
  for _ in range(warmup):
    run_step()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - start)
  return times


@dataclasses.dataclass
class StepTiming:
  """One system's timed train steps on one model size, batch and sequence length."""
  name: str
  step_seconds: list[float]
  tokens_per_step: int
  flops_per_step: float  # model FLOPs (pretrain.model.flops), the same count for every system
  num_devices: int
  accelerator: Accelerator | None  # None: peak unknown (CPU), no MFU
  compile_s: float | None = None
  peak_memory_bytes: int | None = None

  def figures(self) -> dict:
    """The JSON fields: step_ms (median), tokens_per_sec, model_tflops_per_sec (per device), mfu, compile_s,
    peak_memory_bytes."""
    step_s = statistics.median(self.step_seconds)
    per_device = self.flops_per_step / step_s / self.num_devices
    return {
        'step_ms': 1000 * step_s,
        'tokens_per_sec': self.tokens_per_step / step_s,
        'model_tflops_per_sec': per_device / 1e12,
        'mfu': per_device / self.accelerator.peak_flops_per_s if self.accelerator else None,
        'compile_s': self.compile_s,
        'peak_memory_bytes': self.peak_memory_bytes,
    }
