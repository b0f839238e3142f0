"""What the job configs (configs/*_wiki.py) share: one real pretraining job each, on prepared data.

A job file picks a size, the recipe of its reference and the pod or cluster shape it is set up for; its docstring
holds the exact launch command. The config arg is `data=DIR`, a directory of ArrayRecord shards of packed
token ids, made once per tokenizer and sequence length:

  python -m tools.train_tokenizer --source tfds:wikipedia/20230601.en --vocab_size V --out wiki-V.model
  python -m tools.prepare_data --source tfds:wikipedia/20230601.en --tokenizer wiki-V.model --seq_len N --out DIR

(V at most model.vocab_size: 30522 for BERT, 50304 for the decoders; N = data.seq_len of the job).
"""
import ml_collections

from configs import common

# Activation memory. jax.nn.dot_product_attention without `implementation=` is the XLA kernel on every platform:
# it keeps [rows, heads, seq, seq] float32 scores per layer, which remat dots_saveable saves for the backward
# pass. Compiled train-step temporaries per device (XLA CPU buffer assignment, 8 devices, fsdp=8; an estimate of
# GPU/TPU memory, not a measurement on them):
#   gpt2-large, 16 rows x 1024: dots_saveable 82 GiB, dots_with_no_batch_dims 34 GiB
#   1b, 8 rows x 2048:          dots_saveable 88 GiB, dots_with_no_batch_dims 39 GiB, full 15 GiB
# So base_config keeps only the unbatched dots at seq >= 512 (projections and MLP; attention is recomputed), and
# each device runs at most MAX_TOKENS_PER_DEVICE tokens at once, splitting its rows into train.microbatches.
MAX_TOKENS_PER_DEVICE = 16_384


def data_dir(arg: str | None, seq_len: int) -> str:
  """DIR of the config arg `data=DIR`; without it a placeholder that names what to put there."""
  arg = (arg or '').strip()
  key, sep, value = arg.partition('=')
  if arg and (key != 'data' or not sep or not value.strip()):
    raise ValueError(f'config arg: {arg!r} is not data=DIR (a directory made by python -m tools.prepare_data)')
  return value.strip() or f'/YOUR_SHARED_DIR/wiki-{seq_len}'


def microbatches_for(batch_size: int, seq_len: int, devices: int) -> int:
  """The fewest microbatches that split each device's rows into pieces of at most MAX_TOKENS_PER_DEVICE tokens."""
  rows = batch_size // devices
  fits = (k for k in range(1, rows + 1) if rows % k == 0 and rows // k * seq_len <= MAX_TOKENS_PER_DEVICE)
  return next(fits, rows)


def job_config(size: str, objective: str, arg: str | None, *, devices: int, shard_parameters: bool,
               batch_size: int, steps: int, learning_rate: float, warmup_steps: int,
               end_learning_rate_fraction: float = 0.0, preset: str | None = None,
               config: ml_collections.ConfigDict | None = None) -> ml_collections.ConfigDict:
  """base_config(size) on `prepared:DIR`, with the reference's optimizer schedule, for `devices` devices.

  config: the config to start from instead of base_config(size, objective, preset) (a config file's
  get_config(size), with what that file changes: configs/modernbert_base_wiki.py).

  shard_parameters: the mesh is fsdp over all devices (parameters and optimizer state split, for models whose
  replicated training state would crowd a device); else data-parallel over all devices, parameters replicated.
  The schedule (linear for mlm, cosine for clm), AdamW betas, weight decay and bfloat16 stay as base_config sets
  them for the objective; remat as base_config sets it (dots_saveable below seq 512, dots_with_no_batch_dims from it).
  """
  c = config if config is not None else common.base_config(size, objective, preset)
  c.data.source = f'prepared:{data_dir(arg, c.data.seq_len)}'
  c.train.batch_size = batch_size
  c.train.steps = steps
  c.train.learning_rate = learning_rate
  c.train.warmup_steps = warmup_steps
  c.train.end_learning_rate_fraction = end_learning_rate_fraction
  c.train.microbatches = microbatches_for(batch_size, c.data.seq_len, devices)
  c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (1, -1, 1) if shard_parameters else (-1, 1, 1)
  return c
