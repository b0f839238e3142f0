#!/usr/bin/env bash
# Real-data fine-tuning demo, offline after pip: Rotten Tomatoes sentences (vaderSentiment 3.3.2 sdist) as an
# SST-2-layout directory; fine-tunes the tiny pretrained MLM model, the same architecture untrained, and
# prints both next to the majority baseline.
# Usage: bash scripts/movie_review_demo.sh [PRETRAINED_WORKDIR] [OUT]   (pretrains into the first if empty)
source "$(dirname "$0")/setup_env.sh"
pretrained=${1:-runs/tiny-mlm}
out=${2:-runs/movie-reviews}
mkdir -p "$out"
archive="$out/vaderSentiment-3.3.2.tar.gz"
[ -f "$archive" ] || python -m pip download -q --no-binary :all: --no-deps vaderSentiment==3.3.2 -d "$out"
python tools/movie_reviews_to_glue.py "$archive" --out "$out/glue"
[ -d "$pretrained/checkpoints" ] || python -m pretrain --config configs/pretrain_mlm.py:size=tiny --workdir "$pretrained"
# A 5M-parameter model wants a larger step than BERT-base's 2e-5; reviews fit in 64 tokens.
common=(--config configs/finetune_glue.py:task=sst2 --config.init_checkpoint="$pretrained"
        --config.data.source="glue_dir:$out/glue" --config.data.max_length=64 --config.train.learning_rate=1e-4)
python -m finetune "${common[@]}" --workdir "$out/pretrained"
python -m finetune "${common[@]}" --workdir "$out/from_scratch" --config.from_scratch=true
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
pre, scratch = (json.load(open(f'{out}/{name}/results.json')) for name in ('pretrained', 'from_scratch'))
print(f"movie-review dev accuracy: pretrained {pre['dev']['accuracy']:.4f} | no pretraining "
      f"{scratch['dev']['accuracy']:.4f} | majority {pre['majority_baseline']['dev']['accuracy']:.4f}")
PY
