"""Packing: documents -> [cls] ids [sep] -> one token stream -> rows of seq_len, and the rows' model features.

A document cut at a row end continues in the next row as a new segment whose positions restart at 0. Only the
last row of a stream is padded (pad_id, segment 0). Each token carries a kind: document start, continuation or
padding; `features` turns tokens and kinds into tokens, segment_ids (1, 2, ... per packed document, 0 = padding)
and positions.

Row stores: batches read rows by index through `Rows`. PackedRows (in memory) and prepared.ArrayRecordRows (the
shards of tools.prepare_data) hold packed rows and share KindRows.batch; sentence_pairs.PairRows (one
[CLS] A [SEP] B [SEP] per row) gives its own features.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from pretrain.data.tokenizer import Tokenizer, text_batches

_ENCODE_CHUNK = 1024  # documents encoded per call (at most; see text_batches)
# Per-token kind in packed rows: document start, continuation, padding.
START, CONT, PAD = 1, 0, -1


class Rows(Protocol):
  """Rows read by index. `batch(ids)`: the features of rows `ids` as int32 [len(ids), seq_len] arrays (ids past
  the end give all-padding rows: eval's last batch)."""
  seq_len: int

  def __len__(self) -> int: ...

  def batch(self, ids: np.ndarray) -> dict[str, np.ndarray]: ...


class KindRows:
  """A store of packed rows: `read(ids)` gives their tokens and kinds; `batch` pads and derives the features."""
  pad_id: int
  seq_len: int

  def __len__(self) -> int:
    raise NotImplementedError

  def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tokens [len(ids), seq_len] and int8 kinds (START, CONT or PAD) of rows `ids` (all < len(self))."""
    raise NotImplementedError

  def batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    real = ids < len(self)  # ids past the end are padding rows (eval only)
    tokens = np.full((len(ids), self.seq_len), self.pad_id, np.int32)
    kind = np.full(tokens.shape, PAD, np.int8)
    tokens[real], kind[real] = self.read(ids[real])
    return features(tokens, kind)


class ArrayRows:
  """Rows held in memory as a [rows, seq_len] token array."""
  tokens: np.ndarray

  @property
  def seq_len(self) -> int:
    return self.tokens.shape[1]

  def __len__(self) -> int:
    return len(self.tokens)


@dataclasses.dataclass
class PackedRows(ArrayRows, KindRows):
  tokens: np.ndarray  # [rows, seq_len] int32
  kind: np.ndarray  # [rows, seq_len] int8: START, CONT or PAD
  pad_id: int

  @property
  def num_tokens(self) -> int:
    return int((self.kind != PAD).sum())

  def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.tokens[ids], self.kind[ids]


def features(tokens_bl: np.ndarray, kind_bl: np.ndarray) -> dict[str, np.ndarray]:
  """tokens/segment_ids/positions [batch, length]: segments start at documents and at column 0."""
  valid = kind_bl != PAD
  col = np.arange(tokens_bl.shape[1])
  start = valid & ((kind_bl == START) | (col == 0))
  segment_ids = np.cumsum(start, axis=1) * valid
  last_start = np.maximum.accumulate(np.where(start, col, 0), axis=1)
  positions = (col - last_start) * valid
  return {'tokens': tokens_bl.astype(np.int32), 'segment_ids': segment_ids.astype(np.int32),
          'positions': positions.astype(np.int32)}


def pack(docs: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> PackedRows:
  """Encodes docs as [cls] + ids + [sep], concatenates them and cuts rows; the last row is padded."""
  return cut_rows(*encode_documents(docs, tokenizer), seq_len, tokenizer.pad_id)


def encode_documents(docs: Sequence[str], tokenizer: Tokenizer,
                     num_threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """[cls] + ids + [sep] of each document, concatenated: int32 tokens and int8 kinds (START, CONT)."""
  tokens, kinds = [np.zeros(0, np.int32)], [np.zeros(0, np.int8)]
  cls, sep = [tokenizer.cls_id], [tokenizer.sep_id]
  for batch in text_batches(docs, _ENCODE_CHUNK):
    ids = tokenizer.encode_batch(batch, num_threads=num_threads)
    lengths = np.array([len(x) + 2 for x in ids], np.int64)
    tokens.append(np.fromiter(itertools.chain.from_iterable(cls + x + sep for x in ids), np.int32,
                              count=int(lengths.sum())))
    kinds.append(np.full(len(tokens[-1]), CONT, np.int8))
    kinds[-1][np.cumsum(lengths) - lengths] = START
  return np.concatenate(tokens), np.concatenate(kinds)


def cut_rows(flat: np.ndarray, flat_kind: np.ndarray, seq_len: int, pad_id: int) -> PackedRows:
  """Rows of seq_len cut from a token stream; the last one padded (pad_id, PAD)."""
  pad = -len(flat) % seq_len
  flat = np.concatenate([flat, np.full(pad, pad_id, flat.dtype)])
  flat_kind = np.concatenate([flat_kind, np.full(pad, PAD, np.int8)])
  return PackedRows(flat.reshape(-1, seq_len), flat_kind.reshape(-1, seq_len), pad_id)
