r"""BERT-base (110M) masked-LM on English Wikipedia at seq 128, the BERT paper's recipe, on one 8-GPU node.

Recipe (Devlin et al. 2019): batch 256, 1M steps, AdamW lr 1e-4 (b2 0.999, weight decay 0.01), 10k warmup steps
then linear decay to 0, dropout 0.1; bfloat16 compute, remat dots_saveable. The paper's last 10% of steps at
seq 512 would be a second run from this one's checkpoint (--config.init_checkpoint, data at seq 512).
Shape: 1 node x 8 GPUs (A100/H100), data-parallel (data=8): 32 rows of 128 per GPU, no microbatches.

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 30522 --out wiki-30522.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-30522.model --seq_len 128 \
      --out /shared/data/wiki-128

Launch:
  python -m tools.launch slurm --config configs/bert_base_wiki.py:data=/shared/data/wiki-128 \
      --workdir /shared/runs/bert-base --nodes 1 --gpus_per_node 8 --time 72:00:00
"""
from configs import jobs


def get_config(arg: str | None = None):
  return jobs.job_config('bert-base', 'mlm', arg, devices=8, shard_parameters=False, batch_size=256,
                         steps=1_000_000, learning_rate=1e-4, warmup_steps=10_000)
