"""GPT-style causal-LM pretraining (the gpt2 preset: pre-LN, tanh GELU, final LN, tied LM head).

  python -m pretrain --config configs/pretrain_clm.py:size=tiny --workdir /tmp/clm
  python -m pretrain --config configs/pretrain_clm.py:size=gpt2-small --workdir /shared/runs/gpt2 \
      --config.data.source=jsonl:/data/owt/*.jsonl

Sizes: tiny (CPU, minutes), bert-base, bert-large, gpt2-small, gpt2-medium, gpt2-large, 1b.
"""
from configs import common


def get_config(arg: str | None = None):
  return common.base_config(common.parse_size(arg), objective='clm')
