"""Memory and peak speed per chip of the accelerators we plan for (tools.plan: fits; benchmarks: MFU).

HBM is what the device reports (GiB = 2**30 bytes): TPU per chip as in Cloud TPU's system tables, GPU the
`nvidia-smi` total. Peak is dense bfloat16 matmul TFLOP/s per chip (no sparsity), from the vendors' sheets
(SXM parts for the GPUs).

Usable memory leaves a margin: on TPU 90% (runtime reservations, fragmentation, and the gap between the
planned and the real program). On GPU 75%: JAX preallocates that fraction of the memory by default
(XLA_PYTHON_CLIENT_MEM_FRACTION=.75), and the program must fit in that pool; raise the variable (and
pass `usable_fraction`) to use more.
"""
import dataclasses
import re

from pretrain.runtime.errors import require

GIB = 2**30
TPU_USABLE_FRACTION = 0.9
GPU_USABLE_FRACTION = 0.75


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str
  hbm_gib: float  # memory per chip
  peak_bf16_tflops: float  # dense bfloat16, per chip
  usable_fraction: float  # of hbm_gib that a program may plan to use

  @property
  def hbm_bytes(self) -> int:
    return int(self.hbm_gib * GIB)

  def usable_bytes(self, usable_fraction: float | None = None) -> int:
    return int(self.hbm_bytes * (usable_fraction or self.usable_fraction))

  @property
  def peak_flops_per_s(self) -> float:
    return self.peak_bf16_tflops * 1e12


def _tpu(name: str, hbm_gib: float, tflops: float) -> Accelerator:
  return Accelerator(name, hbm_gib, tflops, TPU_USABLE_FRACTION)


def _gpu(name: str, hbm_mib: int, tflops: float) -> Accelerator:
  return Accelerator(name, round(hbm_mib / 1024, 1), tflops, GPU_USABLE_FRACTION)


ACCELERATORS = {a.name: a for a in (
    _tpu('v4', 32, 275),
    _tpu('v5e', 16, 197),
    _tpu('v5p', 95, 459),
    _tpu('v6e', 32, 918),
    _gpu('a100-40gb', 40_960, 312),
    _gpu('a100-80gb', 81_920, 312),
    _gpu('h100-80gb', 81_559, 989),
    _gpu('h200', 143_771, 989),
)}


def get_accelerator(name: str, field: str = '--accelerator') -> Accelerator:
  """The table entry for `name`; an error naming `field` and the choices otherwise."""
  require(name in ACCELERATORS, f'{field}: unknown accelerator {name!r}; choose one of {", ".join(ACCELERATORS)}')
  return ACCELERATORS[name]


# jax Device.device_kind -> table entry. GPU kinds are nvidia-smi names (SXM parts; a PCIe H100 has another
# peak and is left unknown); TPU kinds are what the TPU runtime reports.
_DEVICE_KINDS = (
    (r'^TPU v4', 'v4'), (r'^TPU v5 ?lite|^TPU v5e', 'v5e'), (r'^TPU v5p?$', 'v5p'), (r'^TPU v6', 'v6e'),
    (r'A100.*40GB', 'a100-40gb'), (r'A100.*80GB', 'a100-80gb'), (r'H100 80GB HBM3|H100 SXM', 'h100-80gb'),
    (r'H200', 'h200'),
)


def detect(device_kind: str) -> Accelerator | None:
  """The table entry of a jax device (`jax.devices()[0].device_kind`); None when its peak is unknown (CPU)."""
  for pattern, name in _DEVICE_KINDS:
    if re.search(pattern, device_kind):
      return ACCELERATORS[name]
  return None


def detect_or_get(name: str | None, device_kind: str) -> Accelerator | None:
  """The accelerator `name` (a --accelerator flag) if given, else the one the device kind names."""
  return get_accelerator(name) if name else detect(device_kind)


def model_flops_utilization(flops_per_step: float, step_seconds: float, num_chips: int,
                            accelerator: Accelerator) -> float:
  """MFU: the model FLOPs a step needs (pretrain.model.flops) per second, over the chips' bf16 peak."""
  return flops_per_step / step_seconds / (num_chips * accelerator.peak_flops_per_s)
