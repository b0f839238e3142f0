"""Extractive question answering (SQuAD v1.1 or v2.0) of a pretraining or imported checkpoint.

  python -m finetune --config configs/finetune_squad.py --workdir /tmp/squad \\
      --config.init_checkpoint=CKPT --config.data.source=squad:/data/squad

squad:DIR holds train-v1.1.json and dev-v1.1.json, or train-v2.0.json and dev-v2.0.json (the official files).
Defaults follow BERT and Hugging Face run_qa: windows of 384 tokens, [CLS] question [SEP] context [SEP], with
consecutive context windows sharing doc_stride 128 pieces; questions cut to 64 pieces; 2 epochs, batch 32;
answers up to 30 pieces from the 20 best starts and ends. v2.0: the no-answer threshold is chosen on dev (the
official script's best_f1_thresh) and predictions.json uses it.
"""
import ml_collections

from configs.finetune_glue import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config('squad')
  c.data.max_length = 384
  c.data.doc_stride = 128  # pieces shared by consecutive windows of one context (Hugging Face's stride)
  c.data.max_query_length = 64
  c.data.version = ''  # '' the directory's only pair of files; '1.1' or '2.0' when it holds both
  c.train.epochs = 2
  c.eval = ml_collections.ConfigDict(dict(n_best=20, max_answer_length=30))
  c.lock()
  return c
