"""GLUE fine-tuning of a pretraining checkpoint (the architecture and tokenizer come from the checkpoint).

  python -m finetune --config configs/finetune_glue.py:task=sst2 --workdir /tmp/sst2 \
      --config.init_checkpoint=/tmp/mlm --config.data.source=glue_dir:/data/glue [--config.seed=1 ...]

Defaults are the usual GLUE recipe (BERT paper, Hugging Face run_glue): AdamW, lr 2e-5, batch 32, 3 epochs,
10% warmup then linear decay, max length 128. TASK_DEFAULTS holds per-task changes; any field can be
overridden on the command line.
"""
import ml_collections

from configs.common import SHARDING_RULES

# Per-task departures from the defaults below (field path -> value); glue.py and the CLI apply them.
# MRPC and WNLI train for 5 epochs, as in the Hugging Face GLUE example our reference figures come from.
TASK_DEFAULTS = {
    'mrpc': {'train.epochs': 5},
    'wnli': {'train.epochs': 5},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  task = (arg or 'sst2').removeprefix('task=')
  c = ml_collections.ConfigDict()
  c.task = task
  c.seed = 0
  c.init_checkpoint = ''  # pretraining workdir, its checkpoints/ dir, or one step dir (required)
  c.from_scratch = False  # True: the checkpoint's architecture and tokenizer, freshly initialised weights
  c.save_checkpoint = True  # the best epoch's parameters -> WORKDIR/checkpoints/STEP (exportable to HF)
  c.pooling = 'auto'  # auto: bert's pooler over [CLS], gpt2's last token | mean: mean over the real tokens

  c.data = ml_collections.ConfigDict(dict(
      source='',  # glue_dir:PATH (official GLUE layout) or tfds:glue/TASK (needs TensorFlow)
      max_length=128,  # tokens per example, [CLS] and [SEP]s included; longer texts are truncated
      max_malformed_fraction=0.001,  # malformed rows beyond this fraction of a file are an error
  ))

  # Only the run-time model settings; the architecture is the checkpoint's.
  c.model = ml_collections.ConfigDict(dict(dropout_rate=0.1, attention_dropout_rate=0.0, dtype='float32',
                                           remat_policy='none'))

  c.train = ml_collections.ConfigDict(dict(
      epochs=3,
      batch_size=32,
      eval_batch_size=128,
      learning_rate=2e-5,
      warmup_fraction=0.1,
      end_learning_rate_fraction=0.0,
      schedule='linear',
      weight_decay=0.01,
      b1=0.9,
      b2=0.999,
      eps=1e-6,
      grad_clip_norm=1.0,
      log_every=50,
      max_train_examples=0,  # >0: use only the first N training examples (quick runs)
      max_nonfinite_steps=10,  # a non-finite step is skipped; this many in a row stop the run
  ))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding_rules = SHARDING_RULES
  for path, value in TASK_DEFAULTS.get(task, {}).items():
    section, field = path.split('.')
    c[section][field] = value
  c.lock()
  return c
