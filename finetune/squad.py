"""SQuAD v1.1 / v2.0 files: read the official JSON into examples, find the split files, write predictions.json.

An answer whose `context[answer_start:answer_start + len(text)]` is not its text ("mismatched") keeps its text
(evaluation compares texts only) with start -1, so training labels skip it (span_windows uses the first answer
with a start); more than MAX_MISMATCHED_FRACTION of a file's answers mismatched is an error naming the file and
the first such question, fewer are counted in a warning. The official train files have none.
"""
import dataclasses
import json
import os
import pathlib

from absl import logging

from pretrain.runtime.errors import ConfigError, require
from pretrain.runtime.files import write_atomic

MAX_MISMATCHED_FRACTION = 0.01
# Names looked for in a SQuAD directory, per version: (train, dev).
SPLIT_FILES = {'2.0': ('train-v2.0.json', 'dev-v2.0.json'), '1.1': ('train-v1.1.json', 'dev-v1.1.json'),
               None: ('train.json', 'dev.json')}


@dataclasses.dataclass
class QaExample:
  id: str
  question: str
  context: str
  answers: list[tuple[str, int]]  # (text, character start in context; -1 when mismatched); [] when impossible
  is_impossible: bool


def _get(item: dict, key: str, where: str):
  if not isinstance(item, dict) or key not in item:
    raise ConfigError(f'{where}: no {key!r} key')
  return item[key]


def read_squad(path: str | os.PathLike) -> tuple[list[QaExample], str]:
  """The examples of an official SQuAD JSON file and its version, '1.1' or '2.0'.

  The version is the file's "version" ('v2.0' and '2.0' both read as '2.0'); a file without one is '2.0' when a
  question has "is_impossible", else '1.1'. Impossible questions get answers [] (plausible_answers are ignored).
  """
  path = pathlib.Path(path)
  try:
    data = json.loads(path.read_text(encoding='utf-8'))
  except OSError as e:
    raise ConfigError(f'{path}: cannot read it ({e.strerror or type(e).__name__})') from None
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ConfigError(f'{path}: not a SQuAD JSON file ({e})') from None
  articles = _get(data, 'data', str(path))
  require(isinstance(articles, list), f'{path}: "data" is not a list')
  examples, mismatched, answers_seen, v2_keys = [], [], 0, False
  for a, article in enumerate(articles):
    for p, paragraph in enumerate(_get(article, 'paragraphs', f'{path}: data[{a}]')):
      context = _get(paragraph, 'context', f'{path}: data[{a}].paragraphs[{p}]')
      require(isinstance(context, str), f'{path}: data[{a}].paragraphs[{p}].context is not a string')
      for q, qa in enumerate(_get(paragraph, 'qas', f'{path}: data[{a}].paragraphs[{p}]')):
        qid = str(_get(qa, 'id', f'{path}: data[{a}].paragraphs[{p}].qas[{q}]'))
        where = f'{path}: question {qid}'
        question = str(_get(qa, 'question', where))
        impossible = bool(qa.get('is_impossible', False))
        v2_keys = v2_keys or 'is_impossible' in qa
        answers = []
        for answer in [] if impossible else _get(qa, 'answers', where):
          text, start = _get(answer, 'text', where), _get(answer, 'answer_start', where)
          require(isinstance(text, str) and isinstance(start, int) and not isinstance(start, bool),
                  f'{where}: answer {answer!r} needs a string "text" and an integer "answer_start"')
          answers_seen += 1
          if start < 0 or context[start:start + len(text)] != text:
            mismatched.append(qid)
            start = -1
          answers.append((text, start))
        require(impossible or answers, f'{where}: no answers and not "is_impossible"')
        examples.append(QaExample(qid, question, context, answers, impossible))
  require(examples, f'{path}: no questions')
  if mismatched:
    report = (f'{path}: {len(mismatched)} of {answers_seen} answers are not at their answer_start in the context '
              f'(first: question {mismatched[0]})')
    require(len(mismatched) <= MAX_MISMATCHED_FRACTION * answers_seen,
            f'{report}; more than {MAX_MISMATCHED_FRACTION:.0%}, is this a SQuAD file?')
    logging.warning('%s; kept for evaluation, not used as training labels', report)
  version = str(data.get('version', '2.0' if v2_keys else '1.1')).lstrip('vV')
  require(version in ('1.1', '2.0'), f'{path}: version {data.get("version")!r} is not SQuAD 1.1 or 2.0')
  return examples, version


def split_files(root: pathlib.Path, field: str = 'data.source', version: str | None = None) -> dict:
  """{'train': path, 'dev': path} of the SQuAD files in directory `root`: train-v2.0.json/dev-v2.0.json,
  train-v1.1.json/dev-v1.1.json or train.json/dev.json. `version` ('1.1', '2.0') picks one when several are
  there; without it, more than one pair is an error."""
  root = pathlib.Path(root).expanduser()
  require(root.is_dir(), f'{field}: SQuAD directory {root} does not exist')
  wanted = SPLIT_FILES if version is None else {version: SPLIT_FILES.get(version)}
  require(all(names for names in wanted.values()), f'data.version: {version!r} is not a SQuAD version (1.1 or 2.0)')
  found = {v: names for v, names in wanted.items() if all((root / name).is_file() for name in names)}
  looked_for = ', '.join(' + '.join(names) for names in wanted.values())
  require(found, f'{field}: {root} has no SQuAD files (looked for {looked_for})')
  pairs = ', '.join(' + '.join(names) for names in found.values())
  require(len(found) == 1, f'{field}: {root} has several SQuAD versions ({pairs}); pick one with data.version')
  train, dev = next(iter(found.values()))
  return {'train': root / train, 'dev': root / dev}


def write_predictions(path: str | os.PathLike, predictions: dict[str, str]) -> None:
  """The official predictions.json: {question id: answer text}, '' for no answer; written atomically."""
  write_atomic(path, json.dumps(predictions, ensure_ascii=False, indent=1) + '\n')
