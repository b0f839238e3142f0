r"""A 1.3B decoder (gpt2 preset, 24 x 2048) on English Wikipedia at seq 2048, GPT-3 XL's recipe, on a TPU v5p-64.

Recipe (GPT-3 paper, XL): batch 512 x 2048 = 1M tokens, 286k steps (300B tokens), AdamW lr 2e-4 (b2 0.95,
weight decay 0.1, clip 1.0), 375 warmup steps (375M tokens) then cosine decay to 10%; bfloat16, remat
dots_with_no_batch_dims (see configs/jobs.py). About 20 tokens per parameter (Chinchilla) is --config.train.steps=25000.
Shape: TPU v5p-64 = 32 chips on 8 hosts, fsdp=32: 16 rows of 2048 per chip in 2 microbatches of 8.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 50304 --out wiki-50304.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-50304.model --seq_len 2048 \
      --out /shared/data/wiki-2048

Launch (--copy_repo --setup: the first time on a TPU VM):
  python -m tools.launch tpu --config configs/decoder_1b_wiki.py:data=/shared/data/wiki-2048 \
      --workdir /shared/runs/decoder-1b --tpu NAME --zone us-east5-a --accelerator_type v5p-64 \
      --copy_repo --setup
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('1b', 'clm', arg, devices=32, shard_parameters=True, batch_size=512,
                         steps=286_000, learning_rate=2e-4, warmup_steps=375, end_learning_rate_fraction=0.1)
