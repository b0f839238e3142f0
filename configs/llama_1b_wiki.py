r"""A 1.1B Llama (TinyLlama's shape: 22 x 2048, 32 heads, 4 kv heads) on English Wikipedia at seq 2048, with
TinyLlama's recipe, on 2 nodes x 8 GPUs.

Recipe (TinyLlama, Zhang et al. 2024): batch 1024 x 2048 = 2M tokens, AdamW lr 4e-4 (b1 0.9, b2 0.95, weight
decay 0.1, clip 1.0), 2000 warmup steps then cosine decay to 10% (4e-5); bfloat16, remat dots_with_no_batch_dims
(see configs/jobs.py). TinyLlama ran 3T tokens (1.43M steps); about 20 tokens per parameter (Chinchilla) is
--config.train.steps=11000, which this file sets.
Shape: 2 nodes x 8 GPUs (H100 80 GB) = 16 processes, fsdp=16: 64 rows per GPU in 8 microbatches of 8.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 32000 --out wiki-32000.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-32000.model --seq_len 2048 \
      --out /shared/data/wiki-2048-32k

Launch:
  python -m tools.launch slurm --config configs/llama_1b_wiki.py:data=/shared/data/wiki-2048-32k \
      --workdir /shared/runs/llama-1b --nodes 2 --gpus_per_node 8 --time 72:00:00
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('llama-1b', 'clm', arg, devices=16, shard_parameters=True, batch_size=1024,
                         steps=11_000, learning_rate=4e-4, warmup_steps=2000, end_learning_rate_fraction=0.1,
                         preset='llama')
