"""Llama-style causal-LM pretraining (the llama preset: pre-RMSNorm, rotary positions, SwiGLU, grouped-query
attention, no biases, an untied LM head; --config.model.tie_embeddings=true ties it).

  python -m pretrain --config configs/pretrain_llama.py:size=tiny --workdir /tmp/llama
  python -m pretrain --config configs/pretrain_llama.py:size=llama-1b --workdir /shared/runs/llama-1b \
      --config.data.source=prepared:/shared/data/wiki-2048

Sizes: tiny (CPU, minutes: 4 x 256, 4 heads, 2 kv heads), llama-150m (16 x 768, 12 heads, 4 kv heads),
llama-1b (TinyLlama-1.1B: 22 x 2048, 32 heads, 4 kv heads, MLP 5632), llama-8b (Llama-3-8B: 32 x 4096, 32 heads,
8 kv heads, MLP 14336, vocab 128256, rope theta 500000, seq 8192). configs/llama_1b_wiki.py is a real job.
"""
from configs import common


def get_config(arg: str | None = None):
  size = common.parse_size(arg, choices=common.LLAMA_SIZES)
  c = common.base_config(size, objective='clm', preset='llama')
  if size == 'tiny':
    c.model.num_kv_heads = 2
    c.model.mlp_dim = 768  # 8/3 x 256 rounded up to a multiple of 256, as Llama sizes its SwiGLU
  return c
