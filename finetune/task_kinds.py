"""config.task -> the module that reads, encodes, scores and writes it (a PreparedTask, finetune/prepared.py).

  GLUE tasks (sst2, mnli, ...)  finetune/glue_task.py   glue_dir:PATH or tfds:glue/TASK
  ner                           finetune/ner_task.py    conll:DIR (CoNLL-2003 layout)
  squad                         finetune/qa_task.py     squad:DIR (SQuAD v1.1 or v2.0 JSON)

Each module has validate_source(config) (checks that read no data), uses_pairs(config) (two token types) and
prepare(config, tokenizer) -> PreparedTask.
"""
from types import ModuleType

from finetune import glue_task, ner_task, qa_task
from finetune.tasks import TASKS
from pretrain.runtime.errors import require

KINDS = {'ner': ner_task, 'squad': qa_task, **{name: glue_task for name in TASKS}}


def kind_of(task: str) -> ModuleType:
  require(task in KINDS, f'task: {task!r} is not one of {tuple(KINDS)}')
  return KINDS[task]
