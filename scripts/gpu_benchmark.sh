#!/usr/bin/env bash
# The whole single-GPU benchmark table in one run (bf16, one device, each system in its own process):
#   bash scripts/gpu_benchmark.sh [OUT_DIR]          (default: benchmark-results/)
# Rows, most important first: BERT-large MLM seq 128 batch 256, GPT-2-medium-size CLM seq 1024 batch 32, a ~1B
# decoder seq 2048 batch 16, TinyLlama-1.1B (llama-1b) seq 2048 batch 16, each as ours, Hugging Face Flax and
# PyTorch; compile time of 2 vs 24 layers; the input
# pipeline and checkpoint stall.
# Needs a CUDA jax, and for the peers a CUDA torch and transformers==4.57.6: pip install -e '.[peers]' after
# pip install -U "jax[cuda12]" torch.
#
# Every run (one system of one row) is its own `python -m tools.benchmark` process under its own `timeout`, so a
# slow or failing run costs only itself: OUT_DIR/NAME.log is its output, OUT_DIR/NAME.json its JSON line when it
# finished, OUT_DIR/NAME.why the reason when it did not. A run whose NAME.json already exists is kept, so a second
# call with the same OUT_DIR only runs what is missing. OUT_DIR/summary.md is the table of whatever exists, a
# missing row marked "not run: <why>".
# Environment: STEPS (timed steps, default 20), WARMUP (default 3), INPUT_STEPS (--input's steps, default 20),
# BUDGET_S (seconds for the whole script; a run gets at most what is left, and none starts with under MIN_RUN_S,
# default 30, left; default: no budget), LIMIT_SCALE (multiplies every run's own time limit, default 1; the limits
# are sized for one H100/H200), PYTHON (default python3), TOKENIZER (the --input rows' tokenizer, below).
set -uo pipefail  # no -e: a failing run must not stop the others
cd "$(dirname "$0")/.."
out=${1:-benchmark-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
INPUT_STEPS=${INPUT_STEPS:-20}
BUDGET_S=${BUDGET_S:-0}
MIN_RUN_S=${MIN_RUN_S:-30}
LIMIT_SCALE=${LIMIT_SCALE:-1}
# The builtin corpus (the stdlib's docstrings) is too small to train a 30522- or 50304-piece vocabulary, so the
# --input rows read it with a small tokenizer from the repository: rows are tokenized and packed before the timed
# pulls, so the pipeline's speed does not depend on the vocabulary.
TOKENIZER=${TOKENIZER:-tests/data/pre_redesign/tokenizer.model}
started=$SECONDS

# NAME LIMIT_S ARGS...: one tools.benchmark run under `timeout`; its JSON line goes to OUT/NAME.json, or the reason
# it has none to OUT/NAME.why.
bench() {
  local name=$1 limit=$(( $2 * LIMIT_SCALE )); shift 2
  if [[ -s $out/$name.json ]]; then
    echo "== $name: kept from an earlier run ($out/$name.json)"
    return 0
  fi
  if (( BUDGET_S > 0 )); then
    local left=$(( BUDGET_S - (SECONDS - started) ))
    if (( left < MIN_RUN_S )); then
      echo "out of time: ${left} s of BUDGET_S=${BUDGET_S} left" > "$out/$name.why"
      echo "== $name: not run, $(cat "$out/$name.why")"
      return 0
    fi
    (( left < limit )) && limit=$left
  fi
  rm -f "$out/$name.why"
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $PYTHON -m tools.benchmark $*" | tee "$out/$name.log"
  local t0=$SECONDS
  timeout -k 10 "$limit" "$PYTHON" -m tools.benchmark "$@" 2>&1 | tee -a "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $(( SECONDS - t0 )) s" | tee -a "$out/$name.log"
  "$PYTHON" - "$out" "$name" "$rc" "$limit" <<'EOF'
import json, pathlib, sys
out, name, rc, limit = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
lines = [l.strip() for l in (out / f'{name}.log').read_text(errors='replace').splitlines() if l.strip()]
result = None
for line in reversed(lines):  # the JSON line is stdout's last; a warning on stderr may follow it
  if line.startswith('{'):
    try:
      result = json.loads(line)
      break
    except ValueError:
      pass
if rc == 0 and isinstance(result, dict):
  (out / f'{name}.json').write_text(json.dumps(result) + '\n')
else:
  body = [l for l in lines if not l.startswith('== ')]
  errors = [l for l in body if l.startswith('error: ')]
  if rc in (124, 137):
    why = f'timed out after {limit} s'
  elif errors:
    why = errors[-1].removeprefix('error: ')
  else:
    why = f'exit code {rc}' + (f': {body[-1]}' if body else '')
  if len(why) > 200:  # one table cell: cut at the last sentence end in the first 200 characters
    why = why[:why.rfind('. ', 0, 200) + 1 or 200]
  (out / f'{name}.why').write_text(why + '\n')
EOF
}

MLM=configs/pretrain_mlm.py
CLM=configs/pretrain_clm.py
LLAMA=configs/pretrain_llama.py
SYSTEMS=(ours hf-flax hf-torch)
for system in "${SYSTEMS[@]}"; do
  bench "bert-large.$system" 120 --config $MLM:size=bert-large --steps "$STEPS" --warmup "$WARMUP" --system "$system" \
    --config.train.batch_size=256
done
for system in "${SYSTEMS[@]}"; do
  bench "gpt2-medium.$system" 120 --config $CLM:size=gpt2-medium --steps "$STEPS" --warmup "$WARMUP" \
    --system "$system" --config.train.batch_size=32
done
for system in "${SYSTEMS[@]}"; do
  bench "decoder-1b.$system" 180 --config $CLM:size=1b --steps "$STEPS" --warmup "$WARMUP" --system "$system" \
    --config.train.batch_size=16
done
for system in "${SYSTEMS[@]}"; do
  bench "llama-1b.$system" 180 --config $LLAMA:size=llama-1b --steps "$STEPS" --warmup "$WARMUP" --system "$system" \
    --config.train.batch_size=16
done
bench compile-2-layers 90 --config $MLM:size=bert-large --steps 1 --warmup 0 --system ours \
  --config.model.num_layers=2
bench compile-24-layers 90 --config $MLM:size=bert-large --steps 1 --warmup 0 --system ours
bench input-mlm 240 --config $MLM:size=bert-large --input --steps "$INPUT_STEPS" --config.data.tokenizer="$TOKENIZER"
bench input-clm 240 --config $CLM:size=gpt2-medium --input --steps "$INPUT_STEPS" --config.train.batch_size=32 \
  --config.data.tokenizer="$TOKENIZER"

"$PYTHON" - "$out" "${SYSTEMS[@]}" <<'EOF' | tee "$out/summary.md"
import json, pathlib, sys
out, systems = pathlib.Path(sys.argv[1]), sys.argv[2:]

def load(name):
  path = out / f'{name}.json'
  return json.loads(path.read_text()) if path.is_file() else None

def why(name):
  path = out / f'{name}.why'
  return path.read_text().strip() if path.is_file() else 'no result'

pct = lambda x: '-' if x is None else f'{100 * x:.1f}%'
print('| config | system | step ms | tokens/s | TFLOP/s | MFU | peak GiB | compile s | ours / peer |')
print('|---|---|---|---|---|---|---|---|---|')
for config in ('bert-large', 'gpt2-medium', 'decoder-1b', 'llama-1b'):
  ours = load(f'{config}.ours')
  for system in systems:
    v = load(f'{config}.{system}')
    if v is None:
      print(f'| {config} | {system} | not run: {why(f"{config}.{system}")} | | | | | | |')
      continue
    peak = '-' if v['peak_memory_bytes'] is None else f'{v["peak_memory_bytes"] / 2**30:.1f}'
    compile_s = '-' if v['compile_s'] is None else f'{v["compile_s"]:.1f}'
    ratio = f'{ours["tokens_per_sec"] / v["tokens_per_sec"]:.2f}x' if ours and system != 'ours' else ''
    devices = '' if v.get('devices', 1) == 1 else f' ({v["devices"]} devices)'
    print(f'| {config} | {system}{devices} | {v["step_ms"]:.1f} | {v["tokens_per_sec"]:,.0f} | '
          f'{v["model_tflops_per_sec"]:.1f} | {pct(v["mfu"])} | {peak} | {compile_s} | {ratio} |')

two, deep = load('compile-2-layers'), load('compile-24-layers')
deep_note = ''
if deep is None and load('bert-large.ours'):  # the same config and batch: its compile is the 24-layer one
  deep, deep_note = load('bert-large.ours'), ' (from the bert-large ours run, the same config)'
if two and deep:
  print(f'\ncompile (bert-large, batch 256): 2 layers {two["compile_s"]:.1f} s, 24 layers {deep["compile_s"]:.1f} s'
        f'{deep_note} ({deep["compile_s"] / two["compile_s"]:.2f}x)')
else:
  print(f'\ncompile: not run: 2 layers: {"ok" if two else why("compile-2-layers")}; '
        f'24 layers: {"ok" if deep else why("compile-24-layers")}')
for name in ('input-mlm', 'input-clm'):
  r = load(name)
  if r is None:
    print(f'{name}: not run: {why(name)}')
    continue
  c = r['checkpoint']
  print(f'{name}: pipeline {r["input"]["tokens_per_sec"]:,.0f} tokens/s = {r["input_over_step"]:.1f}x the step '
        f'({r["step_tokens_per_sec"]:,.0f} tokens/s); checkpoint stall '
        f'{pct(c["stall_fraction_at_config_interval"])} of step time at the config\'s interval (a save blocks '
        f'{c["save_blocking_ms"]:.0f} ms; {c["extra_ms_per_save"]:+.0f} ms a save in the loop)')
EOF
