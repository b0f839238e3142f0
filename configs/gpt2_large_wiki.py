r"""GPT-2 large (774M) causal LM on English Wikipedia at seq 1024, GPT-3 Large's recipe, on 2 nodes x 8 GPUs.

Recipe (GPT-3 paper, Large): batch 512 x 1024 = 0.5M tokens, 572k steps (300B tokens), AdamW lr 2.5e-4 (b2 0.95,
weight decay 0.1, clip 1.0), 715 warmup steps (375M tokens) then cosine decay to 10%; bfloat16, remat
dots_with_no_batch_dims (see configs/jobs.py). About 20 tokens per parameter (Chinchilla) is --config.train.steps=29500.
Shape: 2 nodes x 8 GPUs (H100 80 GB) = 16 processes, fsdp=16: 32 rows per GPU in 2 microbatches of 16.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 50304 --out wiki-50304.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-50304.model --seq_len 1024 \
      --out /shared/data/wiki-1024

Launch:
  python -m tools.launch slurm --config configs/gpt2_large_wiki.py:data=/shared/data/wiki-1024 \
      --workdir /shared/runs/gpt2-large --nodes 2 --gpus_per_node 8 --time 72:00:00
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('gpt2-large', 'clm', arg, devices=16, shard_parameters=True, batch_size=512,
                         steps=572_000, learning_rate=2.5e-4, warmup_steps=715, end_learning_rate_fraction=0.1)
