"""BERT-style masked-LM pretraining (the bert preset: post-LN, token types, erf GELU, tied MLM head; any
model.* field may be overridden, e.g. --config.model.norm_position=pre for a pre-LN encoder).

  python -m pretrain --config configs/pretrain_mlm.py:size=tiny --workdir /tmp/mlm
  python -m pretrain --config configs/pretrain_mlm.py:size=bert-base --workdir /shared/runs/bert-base \
      --config.data.source=text:/data/wiki/*.txt --config.mesh.fsdp=-1

Sizes: tiny (CPU, minutes), bert-base, bert-large, gpt2-small, gpt2-medium, gpt2-large, 1b.
"""
from configs import common


def get_config(arg: str | None = None):
  return common.base_config(common.parse_size(arg), objective='mlm')
