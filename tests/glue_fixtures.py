"""A tiny GLUE directory in the official layout (what the standard GLUE download script writes), every task.

Texts are made from a small vocabulary; labels follow a rule a model can learn (for pairs: whether the two
sentences share their first word), so the files are realistic in layout, not in content.
"""
import pathlib
import random

from finetune.tasks import TASKS

WORDS = ('the cat dog bird sat ran sang under over near a red blue green small large quietly loudly house tree '
         'river park old young man woman child saw liked ate found').split()
NLI_PARSE = ('sentence1_binary_parse', 'sentence2_binary_parse', 'sentence1_parse', 'sentence2_parse')
MNLI_LEAD = ('index', 'promptID', 'pairID', 'genre', *NLI_PARSE)
STSB_LEAD = ('index', 'genre', 'filename', 'year', 'old_index', 'source1', 'source2')

# task -> (train/dev header or None (CoLA), test header); the data columns are filled by name below.
LAYOUTS = {
    'cola': (None, ('index', 'sentence')),
    'sst2': (('sentence', 'label'), ('index', 'sentence')),
    'mrpc': (('Quality', '#1 ID', '#2 ID', '#1 String', '#2 String'),
             ('index', '#1 ID', '#2 ID', '#1 String', '#2 String')),
    'stsb': ((*STSB_LEAD, 'sentence1', 'sentence2', 'score'), (*STSB_LEAD, 'sentence1', 'sentence2')),
    'qqp': (('id', 'qid1', 'qid2', 'question1', 'question2', 'is_duplicate'), ('id', 'question1', 'question2')),
    'mnli': ((*MNLI_LEAD, 'sentence1', 'sentence2', 'label1', 'gold_label'), (*MNLI_LEAD, 'sentence1', 'sentence2')),
    'qnli': (('index', 'question', 'sentence', 'label'), ('index', 'question', 'sentence')),
    'rte': (('index', 'sentence1', 'sentence2', 'label'), ('index', 'sentence1', 'sentence2')),
    'wnli': (('index', 'sentence1', 'sentence2', 'label'), ('index', 'sentence1', 'sentence2')),
    'ax': (None, ('index', 'sentence1', 'sentence2')),
}
MNLI_DEV_LABELS = ('label1', 'label2', 'label3', 'label4', 'label5')


def _sentence(rng: random.Random, first: str | None = None) -> str:
  words = [first or rng.choice(WORDS)] + [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
  return ' '.join(words) + ' .'


def _example(rng: random.Random, task_name: str) -> tuple[tuple[str, ...], str]:
  """(texts, label as the files write it)."""
  task = TASKS[task_name]
  if len(task.text_columns) == 1:
    text = _sentence(rng)
    positive = 'red' in text or 'cat' in text
    return (text,), (task.labels[1] if positive else task.labels[0])
  a = _sentence(rng)
  same = rng.random() < 0.5
  b = _sentence(rng, a.split()[0] if same else None)
  if task.is_regression:
    return (a, b), f'{(4.0 if same else 1.0) + rng.random():.3f}'
  return (a, b), task.labels[(rng.randrange(len(task.labels))) if len(task.labels) > 2 else int(same)]


def _row(header: tuple[str, ...], task_name: str, n: int, texts: tuple[str, ...], label: str | None) -> list[str]:
  task = TASKS[task_name]
  names = task.test_text_columns or task.text_columns if label is None else task.text_columns
  values = dict(zip(names, texts))
  values.update({'index': str(n), 'id': str(n), 'label': label, 'gold_label': label, 'Quality': label,
                 'is_duplicate': label, 'score': label})
  if task_name == 'mnli':
    values.update({k: label for k in MNLI_DEV_LABELS})
  return [values.get(column, f'{column}-{n}') for column in header]


def write_task(root: pathlib.Path, task_name: str, rows: int = 12, seed: int = 0) -> None:
  task, (header, test_header) = TASKS[task_name], LAYOUTS[task_name]
  rng = random.Random(f'{task_name}-{seed}')
  directory = root / task.directory
  directory.mkdir(parents=True, exist_ok=True)
  labelled = {'train.tsv': rows, **{name: max(rows // 2, 2) for name in task.dev_files.values()}}
  for name, count in (labelled.items() if task.dev_files else ()):
    file_header = header
    if name.startswith('dev') and task_name == 'mnli':  # MNLI dev files carry all five annotator labels
      file_header = (*header[:-2], *MNLI_DEV_LABELS, 'gold_label')
    lines = [] if file_header is None else ['\t'.join(file_header)]
    for n in range(count):
      texts, label = _example(rng, task_name)
      if file_header is None:  # CoLA: source, label, original label, sentence
        lines.append('\t'.join(('gj04', label, '' if label == '1' else '*', texts[0])))
      else:
        lines.append('\t'.join(_row(file_header, task_name, n, texts, label)))
    (directory / name).write_text('\n'.join(lines) + '\n')
  for name in task.test_files.values():
    lines = ['\t'.join(test_header)]
    for n in range(max(rows // 3, 2)):
      lines.append('\t'.join(_row(test_header, task_name, n, _example(rng, task_name)[0], None)))
    (directory / name).write_text('\n'.join(lines) + '\n')


def write_glue_dir(root: pathlib.Path, rows: int = 12) -> pathlib.Path:
  for task_name in TASKS:
    write_task(root, task_name, rows)
  return root
