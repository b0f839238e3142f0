"""Plans a pretraining job before it is launched: parameters, FLOPs, mesh, memory per device, which chips fit.

  python -m tools.plan --config configs/pretrain_clm.py:size=gpt2-large --devices 64 --accelerator v5p
  python -m tools.plan --config configs/pretrain_mlm.py:size=bert-large --devices 64 \
      --config.mesh.data=8 --config.mesh.fsdp=8 --config.mesh.tensor=1 [--config.train.batch_size=512 ...]

Prints the parameter count, the model FLOPs per token (pretrain.model.flops), and the memory per device by
kind, then one JSON line with every figure. Without a --config.mesh.* override it first estimates every
(data, fsdp, tensor) mesh of N devices (tensor 1, 2, 4 or 8, dividing the heads and the MLP) and suggests the
one with the least communication that fits the accelerator (without --accelerator: the smallest in
pretrain.runtime.accelerators): pure data parallel, then fsdp, then tensor. Where tensor does not divide the
key/value heads of grouped-query attention, they are replicated over it, and the plan says so.

How: on N fake CPU devices the trainer is built exactly as training builds it and the real train step is
compiled ahead of time for abstract inputs (no parameter is ever materialised); the compiler's memory analysis
gives the compiled figures. The parameter, optimizer-state and batch bytes per device are exact, from the
shard shape of every leaf. Activations are estimated from the architecture (tools/plan/memory.py).

N fake devices need XLA_FLAGS and JAX_PLATFORMS set before jax is imported: main() sets them when jax is not
imported yet; when it is (a test session, a notebook) with another device count or platform, main() reruns
`python -m tools.plan` with the same arguments in a subprocess and returns its exit status.

Caveat, the CPU compile: the fake devices use the CPU backend's buffer assignment and fusion, not TPU/GPU's.
Measured on 48 small configs (gpt2-small, bert-base; every remat policy; three meshes of 8): in float32
the plan is 0.91-1.12x the compiled total; llama (grouped-query attention, SwiGLU, an untied head; 7 small
configs on meshes of 8) 0.97-1.10x, and llama-8b at seq 8192 on 256 devices (fsdp 256, float32) 1.03x. With
bfloat16 compute the CPU backend runs matmuls in float32 and keeps float32 copies of the bfloat16 activations
the scanned layers save for the backward pass, so it compiles to more than a TPU or GPU needs: the plan is
0.72-1.00x of it on the small configs, about 0.7x on large ones (gpt2-large on 64 devices, fsdp 64: 6.0 GiB
planned, 9.1 GiB compiled; bert-large, data 64: 5.5 vs 7.8 GiB; llama-8b, fsdp 256: 54.1 vs 77.8 GiB). Both
are printed; the fit table judges each. The attention logits are float32 on every backend
(jax.nn.dot_product_attention's XLA path): under remat dots_saveable they are kept for every layer, most of the
activations at sequence length 1024, and at 8192 one layer's logits and their gradients are most of the working
set (unless cuDNN flash attention takes over on GPU, which the plan does not assume).
"""
import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence

from pretrain.runtime import accelerators
from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.config_files import load_config, parse_with_overrides
from pretrain.runtime.errors import require

GIB = 2**30
MESH_OVERRIDE = '--config.mesh.'


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.plan', description=__doc__.splitlines()[0],
                                   epilog='Any other --config.a.b=value overrides a config field.')
  parser.add_argument('--config', required=True, help='config file[:arg], e.g. configs/pretrain_clm.py:size=gpt2-large')
  parser.add_argument('--devices', type=int, required=True, help='devices (chips) of the job, e.g. 64')
  parser.add_argument('--accelerator', default=None,
                      help=f'one of {", ".join(accelerators.ACCELERATORS)}; default: report them all')
  parser.add_argument('--usable_fraction', type=float, default=None,
                      help='fraction of HBM a program may use (default per accelerator: TPU 0.9, GPU 0.75)')
  return parse_with_overrides(parser, argv)


def _xla_flags_with_devices(flags: str, num_devices: int) -> str:
  flags = re.sub(r'--xla_force_host_platform_device_count=\S+', '', flags)
  return f'{flags} --xla_force_host_platform_device_count={num_devices}'.strip()


def _has_fake_devices(num_devices: int) -> bool:
  """True when this process can compile for num_devices fake CPU devices (setting them up if jax is not loaded)."""
  if 'jax' not in sys.modules:
    os.environ['XLA_FLAGS'] = _xla_flags_with_devices(os.environ.get('XLA_FLAGS', ''), num_devices)
    os.environ['JAX_PLATFORMS'] = 'cpu'
    return True
  import jax  # pylint: disable=g-import-not-at-top
  return jax.default_backend() == 'cpu' and jax.device_count() == num_devices


def _rerun_with_devices(argv: list[str], num_devices: int) -> int:
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=_xla_flags_with_devices(os.environ.get('XLA_FLAGS', ''), num_devices))
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
  return subprocess.run([sys.executable, '-m', 'tools.plan', *argv], env=env, check=False).returncode


def _unit(largest: float) -> tuple[str, int]:
  """GiB for figures of a GiB or more, else MiB (so that small configs do not print rows of zeros)."""
  return ('GiB', GIB) if largest >= GIB else ('MiB', 2**20)


def _gib(n: float) -> str:
  return f'{n / GIB:.2f}'


def _size(n: float) -> str:
  unit, scale = _unit(n)
  return f'{n / scale:.2f} {unit}'


def _si(n: float, unit: str) -> str:
  for scale, prefix in ((1e15, 'P'), (1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if n >= scale:
      return f'{n / scale:.3g} {prefix}{unit}'
  return f'{n:.3g} {unit}'


def _say(text: str = '') -> None:
  print(text, flush=True)


def _ordinal(n: int) -> str:
  return f'{n}{"th" if 10 <= n % 100 < 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")}'


def _print_candidates(plans, rejected, usable: int) -> None:
  name, scale = _unit(max(p.estimate.total for p in plans))
  _say(f'   data  fsdp tensor   params  optim  grads  activ   temp   total  ({name} per device, estimated)')
  for p in plans:
    e = p.estimate
    notes = ', '.join(n for n, on in (('fits', e.total <= usable), ('kv heads replicated', p.kv_heads_replicated))
                      if on)
    _say(f'  {p.shape["data"]:5d} {p.shape["fsdp"]:5d} {p.shape["tensor"]:6d}  '
         + ' '.join(f'{x / scale:6.2f}' for x in (e.params, e.optimizer, e.gradients, e.activations,
                                                    e.temporaries)) + f' {e.total / scale:7.2f}  {notes}')
  for reason in rejected:
    _say(f'  not possible, {reason}')


def _print_memory(estimate, compiled: dict) -> None:
  e = estimate
  rows = [('parameters (exact, from the shardings)', e.params, None),
          ('optimizer state (exact)', e.optimizer, None),
          ('batch (exact)', e.batch, None),
          ('arguments: state + batch', e.params + e.optimizer + e.batch, compiled['argument']),
          ('gradients (float32, sharded as the parameters)', e.gradients, None),
          ('activations kept for the backward pass', e.activations, None),
          ('temporaries (peak working set)', e.temporaries, None),
          ('temporaries: gradients + activations + working set', e.gradients + e.activations + e.temporaries,
           compiled['temp']),
          ('total', e.total, compiled['total'])]
  unit, scale = _unit(max(e.total, compiled['total']))
  _say(f'  {unit + " per device":52s} {"planned":>8s} {"compiled":>9s}')
  for name, planned, got in rows:
    _say(f'  {name:52s} {planned / scale:8.2f} {"" if got is None else f"{got / scale:.2f}":>9s}')


def _fits(names, planned_total: int, compiled_total: int, usable_fraction: float | None) -> dict:
  """Prints and returns, per accelerator, whether the planned and the compiled totals fit its usable HBM."""
  _say(f'  {"accelerator":12s} {"HBM GiB":>8s} {"usable":>8s} {"planned":>8s} {"compiled":>9s}')
  table = {}
  for name in names:
    acc = accelerators.get_accelerator(name)
    usable = acc.usable_bytes(usable_fraction)
    table[name] = {'usable_bytes': usable, 'planned': planned_total <= usable, 'compiled': compiled_total <= usable}
    _say(f'  {name:12s} {acc.hbm_gib:8.1f} {_gib(usable):>8s} {"fits" if table[name]["planned"] else "no":>8s} '
         f'{"fits" if table[name]["compiled"] else "no":>9s}')
  return table


def _choose_plan(args, settings, devices, target: accelerators.Accelerator, usable: int):
  """The given mesh's plan; without one, every mesh estimated and the suggested one."""
  from pretrain.runtime import sharding  # pylint: disable=g-import-not-at-top
  from tools.plan import mesh as plan_mesh  # pylint: disable=g-import-not-at-top
  if any(a.startswith(MESH_OVERRIDE) for a in args.overrides):
    shape = dict(zip(sharding.MESH_AXES, sharding.resolve_mesh_shape(settings.mesh, len(devices))))
    return plan_mesh.plan_mesh(settings, shape, devices), 'given'
  _say(f'estimating every mesh of {len(devices)} devices (sized for {target.name}: {_size(usable)} usable) ...')
  plans, rejected = plan_mesh.plan_candidates(settings, devices)
  _print_candidates(plans, rejected, usable)
  plan, fits = plan_mesh.suggest(plans, usable)
  why = (f'the least communication that fits {target.name}' if fits else
         f'no mesh fits {target.name}; this one needs the least memory')
  _say(f'suggested mesh (no --config.mesh.* given; {why}): {plan.flags}')
  return plan, 'suggested'


def _print_remedies(settings, plan, target: accelerators.Accelerator, usable: int) -> None:
  from tools.plan import mesh as plan_mesh  # pylint: disable=g-import-not-at-top
  remedies = plan_mesh.memory_remedies(settings, plan, usable)
  _say(f'does not fit {target.name} ({_size(usable)} usable); on this mesh it would (estimated) with: '
       + ('; '.join(f'{flag} ({_size(total)})' for flag, total in remedies) or 'no other remat policy, and no '
          'number of microbatches'))


def _print_flops(settings) -> tuple[float, float]:
  """Prints the model FLOPs; returns (per token, per step)."""
  from pretrain import trainer  # pylint: disable=g-import-not-at-top
  from pretrain.model import flops  # pylint: disable=g-import-not-at-top
  seq_len = settings.data.seq_len
  breakdown = flops.forward_flops_breakdown(settings.model, seq_len,
                                            settings.build_objective().predicted_per_sequence(seq_len))
  per_token, per_step = trainer.flops_per_token(settings), trainer.flops_per_step(settings)
  parts = ' + '.join(f'{k} {_si(flops.TRAIN_TO_FORWARD * v, "")}' for k, v in breakdown.items())
  _say(f'training FLOPs per token (forward + backward): {_si(per_token, "FLOP")} = {parts}; '
       f'per step ({settings.train.batch_size} x {seq_len} tokens): {_si(per_step, "FLOP")}')
  return per_token, per_step


def run(args: argparse.Namespace) -> dict:
  """Prints the plan; returns the figures of its JSON line."""
  require(args.devices >= 1, f'--devices: must be >= 1, got {args.devices}')
  require(args.usable_fraction is None or 0 < args.usable_fraction <= 1,
          f'--usable_fraction: must be in (0, 1], got {args.usable_fraction}')
  target = accelerators.get_accelerator(args.accelerator) if args.accelerator else min(
      accelerators.ACCELERATORS.values(), key=lambda a: a.usable_bytes(args.usable_fraction))
  usable = target.usable_bytes(args.usable_fraction)
  config = load_config(args.config, args.overrides)
  import jax  # pylint: disable=g-import-not-at-top  # only now: the fake devices are set up
  from pretrain.model import presets  # pylint: disable=g-import-not-at-top
  from pretrain.settings import PretrainSettings  # pylint: disable=g-import-not-at-top
  from tools.plan.mesh import compile_step, compiled_memory  # pylint: disable=g-import-not-at-top

  settings = PretrainSettings.from_config(config)
  model_cfg = settings.model
  kv_heads = f', {model_cfg.num_kv_heads} kv heads' if model_cfg.num_kv_heads != model_cfg.num_heads else ''
  local = (f', local window {model_cfg.local_window} (every {_ordinal(model_cfg.global_every)} layer global)'
           if model_cfg.has_local_layers else '')
  _say(f'plan: {args.config} on {args.devices} devices: {settings.objective}, {presets.describe(model_cfg)}, '
       f'{model_cfg.num_layers} layers x {model_cfg.hidden_size} ({model_cfg.num_heads} heads of '
       f'{model_cfg.head_dim}{kv_heads}, {model_cfg.mlp} mlp {model_cfg.mlp_dim}{local}, vocab {model_cfg.vocab_size}'
       f'{"" if model_cfg.tie_embeddings else ", untied head"}), seq_len {settings.data.seq_len}, batch '
       f'{settings.train.batch_size}, {model_cfg.dtype}, remat {model_cfg.remat_policy}')
  plan, mesh_source = _choose_plan(args, settings, jax.devices(), target, usable)
  if plan.kv_heads_replicated:
    _say(f'kv heads replicated: tensor={plan.shape["tensor"]} does not divide the {model_cfg.num_kv_heads} '
         'key/value heads, so every tensor device holds all of them (their projections, and those activations)')
  num_params = sum(leaf.size for leaf in jax.tree.leaves(plan.trainer.abstract_state['params']))
  _say(f'parameters: {num_params:,}')
  per_token, per_step = _print_flops(settings)

  _say(f'compiling the train step for the {mesh_source} mesh {plan.label} on {args.devices} fake CPU devices ...')
  executable, compile_s = compile_step(plan)
  compiled = compiled_memory(executable)
  _say(f'compiled in {compile_s:.1f} s')
  _print_memory(plan.estimate, compiled)
  fits = _fits([target.name] if args.accelerator else list(accelerators.ACCELERATORS), plan.estimate.total,
               compiled['total'], args.usable_fraction)
  if plan.estimate.total > usable and (args.accelerator or mesh_source == 'suggested'):
    _print_remedies(settings, plan, target, usable)
  figures = {
      'config': args.config, 'overrides': args.overrides, 'devices': args.devices, 'objective': settings.objective,
      'params': num_params, 'flops_per_token': per_token, 'flops_per_step': per_step,
      'mesh': plan.shape, 'mesh_source': mesh_source, 'kv_heads_replicated': plan.kv_heads_replicated,
      'bytes_per_device': plan.estimate.as_dict(), 'compiled_bytes_per_device': compiled,
      'fits': fits, 'compile_s': round(compile_s, 2),
  }
  _say(json.dumps(figures))
  return figures


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  args = parse_args(argv)
  if args.devices >= 1 and not _has_fake_devices(args.devices):  # run() rejects the others
    return _rerun_with_devices(argv, args.devices)
  return tool_main(lambda _: args, run, argv)

