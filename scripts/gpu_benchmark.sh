#!/usr/bin/env bash
# The whole single-GPU benchmark table in one run (bf16, one device, each system in its own process):
#   bash scripts/gpu_benchmark.sh [OUT_DIR]          (default: benchmark-results/)
# Rows: BERT-large MLM seq 128, GPT-2-medium-size CLM seq 1024, a ~1B decoder seq 2048, each with the Hugging Face
# Flax and PyTorch peers; compile time of 2 vs 24 layers; the input pipeline and checkpoint stall.
# Needs a CUDA jax, and for the peers a CUDA torch and transformers==4.57.6: pip install -e '.[peers]' after
# pip install -U "jax[cuda12]" torch. Every run's log and JSON line land in OUT_DIR; summary.md is the table.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmark-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
STEPS=${STEPS:-20}

bench() {  # NAME ARGS...: one tools.benchmark run; its last line (the JSON) goes to OUT/NAME.json
  local name=$1; shift
  echo "== $name: python -m tools.benchmark $*" | tee "$out/$name.log"
  python -m tools.benchmark "$@" 2>&1 | tee -a "$out/$name.log"
  tail -n 1 "$out/$name.log" > "$out/$name.json"
}

MLM=configs/pretrain_mlm.py
CLM=configs/pretrain_clm.py
bench bert-large --config $MLM:size=bert-large --steps "$STEPS" --peers --config.train.batch_size=256
bench gpt2-medium --config $CLM:size=gpt2-medium --steps "$STEPS" --peers --config.train.batch_size=32
bench decoder-1b --config $CLM:size=1b --steps "$STEPS" --peers --config.train.batch_size=16
bench compile-2-layers --config $MLM:size=bert-large --steps 3 --config.model.num_layers=2
bench compile-24-layers --config $MLM:size=bert-large --steps 3
bench input-mlm --config $MLM:size=bert-large --input --steps 20
bench input-clm --config $CLM:size=gpt2-medium --input --steps 20 --config.train.batch_size=32

python - "$out" <<'EOF' | tee "$out/summary.md"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
load = lambda name: json.loads((out / f'{name}.json').read_text())
pct = lambda x: '-' if x is None else f'{100 * x:.1f}%'
print('| config | system | step ms | tokens/s | TFLOP/s | MFU | peak GiB | ours / peer |')
print('|---|---|---|---|---|---|---|---|')
for name in ('bert-large', 'gpt2-medium', 'decoder-1b'):
  r = load(name)
  rows = [('ours', r, '')] + [(p, v, f'{v["ours_speedup"]:.2f}x') for p, v in r['peers'].items()]
  for system, v, ratio in rows:
    peak = '-' if v['peak_memory_bytes'] is None else f'{v["peak_memory_bytes"] / 2**30:.1f}'
    print(f'| {name} | {system} | {v["step_ms"]:.1f} | {v["tokens_per_sec"]:,.0f} | '
          f'{v["model_tflops_per_sec"]:.1f} | {pct(v["mfu"])} | {peak} | {ratio} |')
  for system, why in r['unavailable'].items():
    print(f'| {name} | {system} | not run: {why} | | | | | |')
two, deep = load('compile-2-layers')['compile_s'], load('compile-24-layers')['compile_s']
print(f'\ncompile: 2 layers {two:.1f} s, 24 layers {deep:.1f} s ({deep / two:.2f}x)')
for name in ('input-mlm', 'input-clm'):
  r = load(name)
  print(f'{name}: pipeline {r["input"]["tokens_per_sec"]:,.0f} tokens/s = {r["input_over_step"]:.1f}x the step; '
        f'checkpoint stall {pct(r["checkpoint"]["stall_fraction_at_config_interval"])} of step time '
        f'at the config\'s interval')
EOF
