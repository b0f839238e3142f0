#!/usr/bin/env bash
# Pretrains the tiny BERT-style MLM model on the built-in corpus (Python's own docs) on CPU, in minutes.
# Usage: bash scripts/pretrain_demo.sh [mlm|clm|llama] [WORKDIR] [--config.x=y ...]
source "$(dirname "$0")/setup_env.sh"
objective=${1:-mlm}; shift || true
workdir=${1:-runs/tiny-$objective}; shift || true
exec python -m pretrain --config "configs/pretrain_$objective.py:size=tiny" --workdir "$workdir" "$@"
