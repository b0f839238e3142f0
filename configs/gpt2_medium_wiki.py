r"""GPT-2 medium (355M) causal LM on English Wikipedia at seq 1024, GPT-3 Medium's recipe, on a TPU v5p-32.

Recipe (GPT-3 paper, Medium): batch 512 x 1024 = 0.5M tokens, 572k steps (300B tokens), AdamW lr 3e-4 (b2 0.95,
weight decay 0.1, clip 1.0), 715 warmup steps (375M tokens) then cosine decay to 10%; bfloat16, remat
dots_with_no_batch_dims (see configs/jobs.py). About 20 tokens per parameter (Chinchilla) is --config.train.steps=13500.
Shape: TPU v5p-32 = 16 chips on 4 hosts, fsdp=16: 32 rows per chip in 2 microbatches of 16.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 50304 --out wiki-50304.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-50304.model --seq_len 1024 \
      --out /shared/data/wiki-1024

Launch (--copy_repo --setup: the first time on a TPU VM):
  python -m tools.launch tpu --config configs/gpt2_medium_wiki.py:data=/shared/data/wiki-1024 \
      --workdir /shared/runs/gpt2-medium --tpu NAME --zone us-east5-a --accelerator_type v5p-32 \
      --copy_repo --setup
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('gpt2-medium', 'clm', arg, devices=16, shard_parameters=True, batch_size=512,
                         steps=572_000, learning_rate=3e-4, warmup_steps=715, end_learning_rate_fraction=0.1)
