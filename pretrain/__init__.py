"""Pretraining: config -> data -> objective -> model -> train step -> checkpoint, each layer importing only those
below it.

  settings.py    the ConfigDict of configs/*.py as frozen, checked settings (every error names its field)
  data/          sources, tokenizers, packing, the held-out split, prepared ArrayRecord shards, sentence pairs
  masking.py     BERT's masking; objectives.py: the Objective interface (mlm, clm, sentence tasks)
  model/         ModelConfig (architecture as fields, bert/gpt2 presets), layers, attention, transformer, heads,
                 FLOP count, checkpoint -> model
  optim.py       AdamW and its schedule
  train_step.py  pure train/eval steps; trainer.py: the sharded state and the jitted steps (what finetune and
                 tools import); train.py: the loop (run)
  runtime/       plumbing under all of it: mesh and sharding, jax.distributed, Orbax checkpoints, preemption,
                 the peer watchdog, metrics logs, files, errors, command-line conventions
"""
