r"""ModernBERT-base (149M: 22 x 768, GeGLU, local/global attention) masked-LM on English Wikipedia at seq 1024,
with ModernBERT's recipe, on one 8-GPU node (ModernBERT-base itself trained on 8 H100s).

Recipe (Warner et al. 2024, configs/pretrain_modernbert.py): batch 4608 x 1024 = 4.7M tokens, 30% masking, peak
lr 8e-4 after a 3B-token warmup (636 steps), betas (0.9, 0.98), eps 1e-6, weight decay 1e-5 per step at the peak
(optax weight_decay 0.0125), clip 1.0; the trapezoidal schedule (wsd): flat at the peak, then a 1-sqrt decay to 0
over the last 10% of the steps; bfloat16, remat dots_with_no_batch_dims. ModernBERT ran 1.72T tokens (364k
steps) over a 2T-token mix; on Wikipedia (about 5B tokens with a 50k vocabulary) this file sets 10k steps, 47B
tokens: about ten passes, BERT's budget (1M x 256 x 128 = 33B tokens) and a bit more.
Shape: 1 node x 8 GPUs (H100 80 GB), data-parallel (data=8): 576 rows per GPU in 36 microbatches of 16.
tools.plan: 149.7M parameters, 940 MFLOP per token, 4.4 PFLOP per step (about 1.4 s on 8 H100 at 40% MFU: 10k
steps in about 4 hours); 10.3 GiB per GPU planned, 15.5 GiB compiled on CPU (which keeps float32 copies).

Data (see configs/jobs.py), once:
  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size 50368 --out wiki-50368.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-50368.model --seq_len 1024 \
      --out /shared/data/wiki-1024-50k

Launch:
  python -m tools.launch slurm --config configs/modernbert_base_wiki.py:data=/shared/data/wiki-1024-50k \
      --workdir /shared/runs/modernbert-base --nodes 1 --gpus_per_node 8 --time 24:00:00
"""
from configs import jobs, pretrain_modernbert


def get_config(arg: str | None = None):
  start = pretrain_modernbert.get_config('modernbert-base')  # ModernBERT's batch, masking, optimizer and schedule
  return jobs.job_config('modernbert-base', 'mlm', arg, devices=8, shard_parameters=False,
                         batch_size=start.train.batch_size, steps=10_000, learning_rate=start.train.learning_rate,
                         warmup_steps=start.train.warmup_steps, config=start)
