"""Fine-tuning defaults that depend on the checkpoint: the learning rate when train.learning_rate is 0 (auto).

BERT's GLUE rate (2e-5) is tuned for hidden size 768 and above; a small encoder barely moves at it (a 4 x 256
bert pretrained 400 steps stays near 60% on the movie reviews). The auto rate grows as the width shrinks:

  lr = 2e-5 * (768 / hidden_size) ** 2,  clipped to [2e-5, 1e-3]

so hidden 768 and 1024 keep 2e-5, MiniLM's 384 gets 8e-5, the tiny config's 256 gets 1.8e-4. The measurements
behind it are in configs/finetune_glue.py's docstring. An explicit train.learning_rate (> 0) always wins.
"""
BASE_LEARNING_RATE = 2e-5  # BERT paper / Hugging Face run_glue, for bert-base (hidden 768) and bert-large
BASE_HIDDEN_SIZE = 768
EXPONENT = 2.0  # how fast the rate grows as the encoder narrows (measured on 4 x 256, see the module docstring)
MAX_LEARNING_RATE = 1e-3  # beyond this AdamW fine-tuning of a small encoder diverges or forgets its pretraining


def auto_learning_rate(hidden_size: int) -> float:
  """The learning rate for fine-tuning an encoder of this width when none is configured."""
  scaled = BASE_LEARNING_RATE * (BASE_HIDDEN_SIZE / max(int(hidden_size), 1)) ** EXPONENT
  return float(min(max(scaled, BASE_LEARNING_RATE), MAX_LEARNING_RATE))


def learning_rate(configured: float, hidden_size: int | None) -> float:
  """`configured` when positive (an explicit choice); else the auto rate for `hidden_size`. hidden_size None
  (the architecture not known yet, e.g. while validating a config) gives the base rate."""
  if configured > 0:
    return float(configured)
  return BASE_LEARNING_RATE if hidden_size is None else auto_learning_rate(hidden_size)


def describe(configured: float, hidden_size: int | None) -> str:
  """'1.8e-04 (auto: hidden size 256)' or '1e-04 (train.learning_rate)', for the run log."""
  rate = learning_rate(configured, hidden_size)
  return f'{rate:.3g} (train.learning_rate)' if configured > 0 else f'{rate:.3g} (auto: hidden size {hidden_size})'
