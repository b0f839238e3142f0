r"""ModernBERT-style masked-LM pretraining (the modernbert preset: pre-LayerNorm without biases, a norm after the
embeddings and none before layer 0's attention, rotary positions, GeGLU MLPs, a global attention layer every third
and sliding-window (local) layers between them, a final norm, the tied MLM head) with ModernBERT's recipe: 30%
masking and a trapezoidal learning rate (train.schedule wsd: warmup, flat, then a 1-sqrt decay over the last
train.decay_fraction of the steps).

  python -m pretrain --config configs/pretrain_modernbert.py:size=tiny --workdir /tmp/modernbert
  python -m pretrain --config configs/pretrain_modernbert.py:size=modernbert-base \
      --workdir /shared/runs/modernbert-base --config.data.source=prepared:/shared/data/wiki-1024-50k \
      --config.train.microbatches=36

Sizes:
  tiny (CPU, minutes: 4 x 256, 4 heads, GeGLU mlp_dim 384 = 1.5 x hidden as ModernBERT sizes it, vocab 8000,
      seq 128). Its local window is 64 tokens (32 either side), not ModernBERT's 128: at seq 128 a 128-token window
      (64 either side) would still see most of every sequence, so the local layers would hardly differ from the
      global ones. Layers 0 and 3 are global, 1 and 2 local.
  modernbert-base (22 x 768, 12 heads, mlp_dim 1152, vocab 50368, seq 1024, positions up to 8192),
  modernbert-large (28 x 1024, 16 heads, mlp_dim 2624, vocab 50368, seq 1024, positions up to 8192).
configs/modernbert_base_wiki.py is a real job.

Recipe of the two large sizes (Warner et al. 2024; their yamls/modernbert/modernbert-base-pretrain.yaml): batch
4608 (base) / 4928 (large) sequences of 1024, peak learning rate 8e-4 / 5e-4 after a warmup of 3B / 2B tokens,
about 1.7T tokens, betas (0.9, 0.98), eps 1e-6, weight decay 1e-5. Their StableAdamW decays weights by 1e-5 of
their value per step at the peak (decoupled from the learning rate); optax's AdamW multiplies weight_decay by the
learning rate, so weight_decay is 1e-5 / learning_rate here (0.0125 / 0.02). Not reproduced: StableAdamW's
per-tensor update clipping (global-norm gradient clipping at 1.0 instead) and the batch-size warmup. The
rotary bases are the released models' (global 160000, local 10000); ModernBERT's seq-1024 phase used 10000 for
both (--config.model.rope_theta=10000) and raised the global one for its 8192-token context extension. These
batches need microbatches on any real device count (train.microbatches; python -m tools.plan suggests a mesh).
"""
from configs import common

# size -> (sequences per batch, peak learning rate, warmup tokens, training tokens)
RECIPES = {
    'modernbert-base': (4608, 8e-4, 3e9, 1.719e12),
    'modernbert-large': (4928, 5e-4, 2e9, 1.7e12),
}
STEP_DECAY = 1e-5  # StableAdamW's decoupled weight decay per step at the peak learning rate


def get_config(arg: str | None = None):
  size = common.parse_size(arg, choices=common.MODERNBERT_SIZES)
  c = common.base_config(size, objective='mlm', preset='modernbert')
  c.mlm.mask_prob = 0.3  # ModernBERT (after MosaicBERT): 30% of the tokens, 80/10/10 mask/random/kept
  c.train.update(schedule='wsd', decay_fraction=0.1, decay_shape='1-sqrt', b1=0.9, b2=0.98, eps=1e-6)
  if size == 'tiny':
    c.model.mlp_dim = 384  # 1.5 x 256: ModernBERT's GeGLU width per input layer (1152 = 1.5 x 768)
    c.model.local_window = 64  # see the docstring: 128 would see most of a 128-token sequence
    return c
  batch, learning_rate, warmup_tokens, tokens = RECIPES[size]
  tokens_per_step = batch * c.data.seq_len
  c.train.update(batch_size=batch, learning_rate=learning_rate, weight_decay=STEP_DECAY / learning_rate,
                 warmup_steps=round(warmup_tokens / tokens_per_step), steps=round(tokens / tokens_per_step))
  return c
