r"""GPT-2 small (124M) causal LM on English Wikipedia at seq 1024, nanoGPT's recipe, on one 8-GPU node.

Recipe (nanoGPT's GPT-2 reproduction; GPT-3 paper, Small): batch 512 x 1024 = 0.5M tokens (nanoGPT: 480),
600k steps, AdamW lr 6e-4 (b2 0.95, weight decay 0.1, clip 1.0), 2000 warmup steps then cosine decay to 6e-5;
bfloat16, remat dots_with_no_batch_dims. 600k steps is 300B tokens, ~50 passes over Wikipedia; about 20 tokens per
parameter (Chinchilla) is --config.train.steps=5000.
Shape: 1 node x 8 GPUs (A100/H100), data-parallel (data=8): 64 rows per GPU in 4 microbatches of 16.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 50304 --out wiki-50304.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-50304.model --seq_len 1024 \
      --out /shared/data/wiki-1024

Launch:
  python -m tools.launch slurm --config configs/gpt2_small_wiki.py:data=/shared/data/wiki-1024 \
      --workdir /shared/runs/gpt2-small --nodes 1 --gpus_per_node 8 --time 72:00:00
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('gpt2-small', 'clm', arg, devices=8, shard_parameters=False, batch_size=512,
                         steps=600_000, learning_rate=6e-4, warmup_steps=2000, end_learning_rate_fraction=0.1)
