"""Shared pieces of every config: the model size table, the mesh and the logical->mesh sharding rules.

Configs are `get_config(arg)` functions (ml_collections); `arg` is `size=NAME` or just `NAME`.
"""
import ml_collections

from pretrain.model import presets

# name -> (num_layers, hidden_size, num_heads, mlp_dim, vocab_size, seq_len, max_position_embeddings)
SIZES = {
    'tiny': (4, 256, 4, 1024, 8000, 128, 512),
    'bert-base': (12, 768, 12, 3072, 30522, 128, 512),
    'bert-large': (24, 1024, 16, 4096, 30522, 128, 512),
    'gpt2-small': (12, 768, 12, 3072, 50304, 1024, 1024),
    'gpt2-medium': (24, 1024, 16, 4096, 50304, 1024, 1024),
    'gpt2-large': (36, 1280, 20, 5120, 50304, 1024, 1024),
    '1b': (24, 2048, 16, 8192, 50304, 2048, 2048),
    # Llama shapes (configs/pretrain_llama.py); SwiGLU MLPs, so mlp_dim is about 8/3 of hidden_size.
    'llama-150m': (16, 768, 12, 2048, 32000, 2048, 2048),
    'llama-1b': (22, 2048, 32, 5632, 32000, 2048, 2048),  # TinyLlama-1.1B
    'llama-8b': (32, 4096, 32, 14336, 128256, 8192, 8192),  # Llama-3-8B
    # ModernBERT shapes (configs/pretrain_modernbert.py): GeGLU MLPs (mlp_dim is each of its two input layers'
    # width: Hugging Face's intermediate_size), pretrained at seq 1024, rotary positions up to 8192.
    'modernbert-base': (22, 768, 12, 1152, 50368, 1024, 8192),
    'modernbert-large': (28, 1024, 16, 2624, 50368, 1024, 8192),
}
LLAMA_SIZES = ('tiny', 'llama-150m', 'llama-1b', 'llama-8b')
MODERNBERT_SIZES = ('tiny', 'modernbert-base', 'modernbert-large')
# The sizes pretrain_mlm.py and pretrain_clm.py offer: not the shapes of another config file's architecture.
GENERIC_SIZES = tuple(s for s in SIZES if s not in LLAMA_SIZES[1:] + MODERNBERT_SIZES[1:])
# Grouped-query attention (num_kv_heads) and the rotary base of the sizes that differ from the defaults
# (num_kv_heads = num_heads, rope_theta: the preset's, else 10000).
KV_HEADS = {'llama-150m': 4, 'llama-1b': 4, 'llama-8b': 8}
ROPE_THETA = {'llama-8b': 500_000.0}

# Logical axis name -> mesh axes. Parameters and key activations carry the logical names; this table alone
# decides how they are laid out. The batch is split over data and fsdp; fsdp also shards parameters and
# optimizer state along 'embed'; tensor splits heads, the MLP and the vocabulary.
SHARDING_RULES = (
    ('batch', ('data', 'fsdp')),
    ('length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),  # replicated where tensor does not divide num_kv_heads
    ('act_kv_heads', 'tensor'),
    ('kv', None),
    ('mlp', 'tensor'),
    ('layers', None),
    ('position', None),
    ('type_vocab', None),
    ('norm', None),
    ('embed_out', None),
    ('classes', None),
)

MESH_AXES = ('data', 'fsdp', 'tensor')
# Local attention (model.local_window, global_every, local_rope_theta): none unless the preset has it (modernbert).
ARCHITECTURE_DEFAULTS = dict(local_window=0, global_every=1, local_rope_theta=0.0)


def parse_size(arg: str | None, default: str = 'tiny', choices=GENERIC_SIZES) -> str:
  """Accepts '', 'tiny' or 'size=tiny'; returns the size name (one of `choices`) or raises naming them."""
  arg = (arg or '').strip()
  for part in filter(None, arg.split(',')):
    key, _, value = part.rpartition('=')
    if key in ('', 'size'):
      arg = value
    else:
      raise ValueError(f'config arg: unknown key {key!r} in {arg!r}; use size=NAME')
  size = arg or default
  if size not in choices:
    raise ValueError(f'config arg: unknown size {size!r}; choose one of {", ".join(choices)}')
  return size


# The architecture each objective's config file starts from (any model.* field may be overridden).
OBJECTIVE_PRESETS = {'mlm': 'bert', 'clm': 'gpt2'}


def base_config(size: str, objective: str, preset: str | None = None) -> ml_collections.ConfigDict:
  """The full pretraining config for `size` and objective 'mlm' or 'clm', its model fields filled in from
  `preset` (pretrain/model/presets.py; default: bert for mlm, gpt2 for clm)."""
  layers, hidden, heads, mlp, vocab, seq_len, max_len = SIZES[size]
  is_bert = objective == 'mlm'
  architecture = presets.preset_fields(preset or OBJECTIVE_PRESETS[objective])  # see ModelConfig
  large = size not in ('tiny',)
  c = ml_collections.ConfigDict()
  c.objective = objective
  c.seed = 0
  # A checkpoint to start from (e.g. imported by tools.convert_checkpoint from-hf): its parameters, architecture
  # and tokenizer replace the model.* shape fields and data.tokenizer; optimizer and data start fresh.
  c.init_checkpoint = ''

  # Fields a preset may leave out take their defaults here, so that any of them can be overridden.
  c.model = ml_collections.ConfigDict({**ARCHITECTURE_DEFAULTS, **architecture, **dict(
      vocab_size=vocab,
      hidden_size=hidden,
      num_layers=layers,
      num_heads=heads,
      num_kv_heads=KV_HEADS.get(size, 0),  # 0: num_heads; a divisor of it below that (grouped-query attention)
      head_dim=0,  # 0: hidden_size // num_heads
      rope_theta=ROPE_THETA.get(size, architecture.get('rope_theta', 10_000.0)),  # rotary positions only
      mlp_dim=mlp,
      max_position_embeddings=max_len,
      dropout_rate=0.1,
      attention_dropout_rate=0.0,  # >0 leaves the fused attention kernel for an explicit softmax
      initializer_range=0.02,
      dtype='bfloat16' if large else 'float32',  # compute dtype; parameters stay float32
      # none | full | dots_saveable | dots_with_no_batch_dims. At long sequences the float32 attention scores that
      # dots_saveable keeps for every layer dominate memory (tools.plan): keep only the unbatched matmuls there.
      # tiny: dots_saveable makes the CPU step ~10% faster than none (fewer activations stacked by the layer scan;
      # the elementwise ones are recomputed inside the backward's fusions).
      remat_policy=(('dots_saveable' if seq_len < 512 else 'dots_with_no_batch_dims') if large else
                    'dots_saveable' if size == 'tiny' else 'none'),
      # auto | xla | cudnn | pallas_gpu | splash; auto: the fastest that supports the model on this backend
      attention_impl='auto',
  )})

  c.mlm = ml_collections.ConfigDict(dict(
      mask_prob=0.15, mask_token_prob=0.8, random_token_prob=0.1,
      whole_word_masking=False,  # mask every piece of a chosen word together
      sentence_task='none',  # none | nsp (next sentence) | sop (sentence order): BERT pairs + a pooled head
  ))

  c.data = ml_collections.ConfigDict(dict(
      source='builtin:stdlib-docs',
      seq_len=seq_len,
      tokenizer='',  # SentencePiece .model file; '' trains one on the source (cached)
      eval_fraction=0.02,
      max_doc_chars=100_000,
      num_workers=0,
      allow_source_change=False,  # True: resume although the corpus' rows differ from the checkpoint's (a warning)
  ))

  c.train = ml_collections.ConfigDict(dict(
      steps=(600 if is_bert else 400) if size == 'tiny' else 1_000_000,  # tiny: minutes on a 2-core CPU
      batch_size=16 if size == 'tiny' else 256,
      learning_rate=1e-3 if size == 'tiny' else (1e-4 if is_bert else 6e-4),
      end_learning_rate_fraction=0.0,
      warmup_steps=60 if size == 'tiny' else 10_000,
      schedule='linear' if is_bert else 'cosine',  # decay after warmup: linear | cosine | constant | wsd
      decay_fraction=0.1,  # wsd (warmup-stable-decay): the last 10% of the steps decay (pretrain/optim.py)
      decay_shape='1-sqrt',  # wsd: 1-sqrt | linear
      weight_decay=0.01 if is_bert else 0.1,
      b1=0.9,
      b2=0.999 if is_bert else 0.95,
      eps=1e-6 if is_bert else 1e-8,
      grad_clip_norm=1.0,
      microbatches=1,  # gradient accumulation: the batch runs as this many microbatches in one jitted step
      log_every=20 if size == 'tiny' else 100,
      eval_every=200 if size == 'tiny' else 5000,
      eval_batches=20 if size == 'tiny' else 100,
      checkpoint_every=200 if size == 'tiny' else 5000,
      keep_checkpoints=3,
      stop_at_step=0,  # >0: checkpoint and exit at this step (a time-limited job); rerun to continue
      max_nonfinite_steps=10,  # a non-finite step is skipped; this many in a row stop the job
      # Tokens per device in one chunk of the output layer + cross-entropy: the [tokens, vocab] float32 logits
      # exist for one chunk at a time (forward and backward). 0: all tokens at once.
      loss_chunk_tokens=4096,
      profile_steps='',  # e.g. '100:105': a jax.profiler trace of steps 100..104 under WORKDIR/profile/
  ))

  # -1 takes all remaining devices. Small models replicate and split the batch; large ones shard with fsdp.
  c.mesh = ml_collections.ConfigDict(dict(data=-1 if not large else 1, fsdp=1 if not large else -1, tensor=1))
  c.sharding_rules = SHARDING_RULES
  c.lock()  # overrides may change values, never add keys
  return c
