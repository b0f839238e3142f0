"""GLUE examples -> fixed-shape token arrays, BERT style.

  single: [CLS] a [SEP]             token types 0 ...
  pair:   [CLS] a [SEP] b [SEP]     token types 0 for [CLS] a [SEP], 1 for b [SEP]

Pairs are truncated longest-first. Every split of a task is padded to one length: the longest example
rounded up to PAD_MULTIPLE, capped at data.max_length, so short-sentence tasks do not pay for 128 tokens.
"""
import numpy as np

from finetune.data import Examples
from pretrain.data.tokenizer import Tokenizer

PAD_MULTIPLE = 16


def _truncate(a: list[int], b: list[int] | None, budget: int) -> tuple[list[int], list[int] | None]:
  if b is None:
    return a[:budget], None
  while len(a) + len(b) > budget:
    if len(a) >= len(b):
      a = a[:-1]
    else:
      b = b[:-1]
  return a, b


def token_rows(examples: Examples, tokenizer: Tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
  """(token ids, token types) per example, truncated to max_length."""
  columns = list(zip(*examples.texts))
  ids_per_column = [tokenizer.encode_batch([text.strip() for text in column]) for column in columns]
  rows = []
  for parts in zip(*ids_per_column):
    a, b = _truncate(parts[0], parts[1] if len(parts) > 1 else None, max_length - (3 if len(parts) > 1 else 2))
    tokens = [tokenizer.cls_id, *a, tokenizer.sep_id]
    types = [0] * len(tokens)
    if b is not None:
      tokens += [*b, tokenizer.sep_id]
      types += [1] * (len(b) + 1)
    rows.append((tokens, types))
  return rows


def padded_length(rows_per_split: list[list[tuple[list[int], list[int]]]], max_length: int) -> int:
  return length_for(max(len(tokens) for rows in rows_per_split for tokens, _ in rows), max_length)


def length_for(longest: int, max_length: int) -> int:
  """The padded length of a task whose longest row has `longest` tokens (all tasks: GLUE, NER, SQuAD)."""
  return min(max_length, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def to_arrays(rows: list[tuple[list[int], list[int]]], length: int, pad_id: int) -> dict[str, np.ndarray]:
  """tokens, token_type_ids, segment_ids (1 = real token, 0 = padding): int32 [examples, length]."""
  tokens = np.full((len(rows), length), pad_id, np.int32)
  types = np.zeros((len(rows), length), np.int32)
  segments = np.zeros((len(rows), length), np.int32)
  for i, (ids, type_ids) in enumerate(rows):
    tokens[i, :len(ids)], types[i, :len(ids)], segments[i, :len(ids)] = ids, type_ids, 1
  return {'tokens': tokens, 'token_type_ids': types, 'segment_ids': segments}
