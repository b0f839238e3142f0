"""Benchmarks the real jitted train step: median step time, tokens/s, model TFLOP/s, MFU, compile time, memory.

  python -m tools.benchmark --config configs/pretrain_mlm.py:size=tiny --steps 20
  python -m tools.benchmark --config configs/pretrain_mlm.py:size=bert-large --steps 20 --peers
  python -m tools.benchmark --config configs/pretrain_clm.py:size=tiny --input

Prints a table, and last one JSON line: step_ms, tokens_per_sec, model_tflops_per_sec (per device), mfu (null
when the device's peak is unknown, e.g. CPU; --accelerator names it), compile_s, peak_memory_bytes (the device's
peak on GPU/TPU, the compiled step's footprint on CPU).

Model FLOPs are pretrain.model.flops' count, shared with tools.plan and the training log: 6 per weight and token
for the matmuls (grouped-query k/v and SwiGLU's three matrices as they are), plus attention (4 n h per key and
layer forward for n heads of width h; causal attention counts the keys a query sees, (T + 1) / 2 on average),
plus the output layer (tied or not) on the predicted tokens only.

--peers also runs the same size, batch and sequence length through Hugging Face Flax and PyTorch
(tools.benchmark.peers), each system in its own process one after the other (no shared thread pools or device
memory), on one device, and prints ours / peer. A peer that cannot run is reported with the reason.
--input measures the input pipeline alone (tokens/s delivered, against the step's consumption) and the time the
step loop waits on a checkpoint save (tools.benchmark.pipeline).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from pretrain.runtime import accelerators
from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.config_files import load_config, parse_with_overrides
from pretrain.runtime.errors import require

OURS = 'ours'
FIELDS = ('step_ms', 'tokens_per_sec', 'model_tflops_per_sec', 'mfu', 'compile_s', 'peak_memory_bytes')


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.benchmark', description=__doc__.splitlines()[0],
                                   epilog='Any other --config.a.b=value overrides a config field.')
  parser.add_argument('--config', required=True, help='config file[:arg], e.g. configs/pretrain_mlm.py:size=tiny')
  parser.add_argument('--steps', type=int, default=20, help='timed steps (the median is reported)')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps after compilation')
  parser.add_argument('--accelerator', default=None,
                      help=f'the chip whose peak MFU divides by (one of {", ".join(accelerators.ACCELERATORS)}); '
                      'default: detected from the device kind')
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument('--peers', action='store_true', help='also run the Hugging Face Flax and PyTorch peers')
  mode.add_argument('--system', choices=(OURS, 'hf-flax', 'hf-torch'), default=None,
                    help='run only this system (what --peers runs in each child process)')
  mode.add_argument('--input', action='store_true', help='measure the input pipeline and the checkpoint stall')
  return parse_with_overrides(parser, argv)


def _human_bytes(n: int | None) -> str:
  return '-' if n is None else f'{n / 2**30:.2f} GiB' if n >= 2**30 else f'{n / 2**20:.1f} MiB'


def print_table(rows: dict[str, dict], unavailable: dict[str, str]) -> None:
  """One line per system; with peers, ours' tokens/s over each peer's."""
  ours = rows.get(OURS)
  print(f'{"system":10s} {"step ms":>9s} {"tokens/s":>11s} {"TFLOP/s/dev":>12s} {"MFU":>7s} {"compile s":>10s} '
        f'{"peak memory":>12s} {"ours/peer":>10s}')
  for name, r in rows.items():
    mfu = '-' if r['mfu'] is None else f'{100 * r["mfu"]:.1f}%'
    compile_s = '-' if r['compile_s'] is None else f'{r["compile_s"]:.1f}'
    ratio = f'{ours["tokens_per_sec"] / r["tokens_per_sec"]:.2f}x' if ours and name != OURS else ''
    print(f'{name:10s} {r["step_ms"]:9.1f} {r["tokens_per_sec"]:11,.0f} {r["model_tflops_per_sec"]:12.3f} '
          f'{mfu:>7s} {compile_s:>10s} {_human_bytes(r["peak_memory_bytes"]):>12s} {ratio:>10s}')
  for name, reason in unavailable.items():
    print(f'{name:10s} not run: {reason}')


def measure_system(args: argparse.Namespace, config, name: str) -> dict:
  """One system's figures, measured in this process, with the number of devices it ran on."""
  if name != OURS:  # the peers build their own models; the torch peer never starts jax
    from pretrain.settings import PretrainSettings  # pylint: disable=g-import-not-at-top
    from pretrain.trainer import flops_per_step  # pylint: disable=g-import-not-at-top
    from tools.benchmark import peers as bench_peers  # pylint: disable=g-import-not-at-top
    settings = PretrainSettings.from_config(config)
    timing = bench_peers.MEASURE[name](settings, flops_per_step(settings), args.steps, args.warmup,
                                       args.accelerator)
  else:
    import jax  # pylint: disable=g-import-not-at-top
    from tools.benchmark import step as bench_step  # pylint: disable=g-import-not-at-top
    accelerator = accelerators.detect_or_get(args.accelerator, jax.devices()[0].device_kind)
    timing = bench_step.measure(bench_step.build(config), args.steps, args.warmup, accelerator)
  return {**timing.figures(), 'devices': timing.num_devices}


def _child_env() -> dict[str, str]:
  """Each system alone on one device: no fake CPU device count, the project on the path."""
  env = dict(os.environ)
  env['XLA_FLAGS'] = re.sub(r'--xla_force_host_platform_device_count=\S+', '', env.get('XLA_FLAGS', '')).strip()
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
  return env


def _run_child(args: argparse.Namespace, name: str) -> tuple[dict | None, str]:
  """(figures, '') from a child process running one system, or (None, why it could not run)."""
  argv = [sys.executable, '-m', 'tools.benchmark', '--config', args.config, '--steps', str(args.steps),
          '--warmup', str(args.warmup), '--system', name, *args.overrides]
  if args.accelerator:
    argv += ['--accelerator', args.accelerator]
  print(f'running {name} ...', flush=True)
  done = subprocess.run(argv, env=_child_env(), capture_output=True, text=True, check=False)
  lines = done.stdout.strip().splitlines()
  if done.returncode == 0 and lines:
    return json.loads(lines[-1]), ''
  errors = [line for line in done.stderr.strip().splitlines() if line.strip()]
  return None, (errors[-1] if errors else f'exit code {done.returncode}').removeprefix('error: ')


def run_peers(args: argparse.Namespace) -> dict:
  from tools.benchmark.peers import PEERS  # pylint: disable=g-import-not-at-top
  rows, unavailable = {}, {}
  for name in (OURS, *PEERS):
    figures, why = _run_child(args, name)
    if figures is None:
      require(name != OURS, f'--config: our step did not run: {why}')
      unavailable[name] = why
      continue
    require(figures['devices'] == 1, f'--peers: the peers run on one device and ours ran on {figures["devices"]}; '
            'show the processes one device (e.g. CUDA_VISIBLE_DEVICES=0)')
    rows[name] = {k: figures[k] for k in FIELDS}
  print_table(rows, unavailable)
  result = dict(rows[OURS])
  result['peers'] = {name: {**r, 'ours_speedup': rows[OURS]['tokens_per_sec'] / r['tokens_per_sec']}
                     for name, r in rows.items() if name != OURS}
  result['unavailable'] = unavailable
  return result


def run_input(args: argparse.Namespace, config) -> dict:
  """The step's tokens/s, the input pipeline's (masks are drawn inside the step, so MLM and CLM pipelines deliver
  the same rows), and the checkpoint stall over 3 rounds of 4 saves."""
  from tools.benchmark import pipeline as bench_input
  from tools.benchmark import step as bench_step  # pylint: disable=g-import-not-at-top  # imports jax
  step = bench_step.measure(bench_step.build(config), args.steps, args.warmup).figures()
  pipeline = bench_input.measure_input_pipeline(config, batches=max(args.steps, 20))
  every = max(1, args.steps // 4)
  with tempfile.TemporaryDirectory(prefix='benchmark-checkpoints-') as workdir:
    stall = bench_input.measure_checkpoint_stall(config, workdir, steps=4 * every, every=every, rounds=3)
  bench_input.print_input_report([pipeline], stall, step['tokens_per_sec'])
  return {'step_tokens_per_sec': step['tokens_per_sec'], 'input': pipeline,
          'input_over_step': pipeline['tokens_per_sec'] / step['tokens_per_sec'], 'checkpoint': stall}


def run(args: argparse.Namespace) -> dict:
  require(args.steps >= 1, f'--steps: must be >= 1, got {args.steps}')
  require(args.warmup >= 0, f'--warmup: must be >= 0, got {args.warmup}')
  if args.accelerator:
    accelerators.get_accelerator(args.accelerator)  # a bad name fails before any work
  config = load_config(args.config, args.overrides)
  if args.peers:
    result = run_peers(args)
  elif args.input:
    result = run_input(args, config)
  else:
    name = args.system or OURS
    result = measure_system(args, config, name)
    print_table({name: result}, {})
  print(json.dumps(result), flush=True)
  return result


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)

