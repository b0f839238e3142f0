"""Named-entity recognition (token classification) of a pretraining or imported checkpoint, CoNLL-2003 layout.

  python -m finetune --config configs/finetune_ner.py --workdir /tmp/ner \\
      --config.init_checkpoint=CKPT --config.data.source=conll:/data/conll2003

conll:DIR holds train.txt (or eng.train), dev.txt / valid.txt (or eng.testa) and optionally test.txt (or
eng.testb): a word per line, the tag in the last column, IOB1 or IOB2 (read as IOB2). The tag set is the training
file's. A word's label sits on its first piece; a sentence longer than data.max_length becomes overlapping windows
(data.stride pieces shared). Dev scores: entity-level precision, recall and F1 (CoNLL's rules: type and both
boundaries), macro-F1 over the entity types and token accuracy; the best epoch by F1.
"""
import ml_collections

from configs.finetune_glue import base_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  del arg
  c = base_config('ner')
  c.data.stride = 32  # pieces shared by consecutive windows of a sentence longer than max_length
  c.lock()
  return c
