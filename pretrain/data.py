"""Config -> documents -> tokenizer -> packed rows -> grain batches, resumable and sliced per process.

Split: a document is held out for eval when blake2b(text) / 2**64 < data.eval_fraction (duplicates of a
text always land on the same side); at least one distinct text is held out when eval_fraction > 0, and
at least one is kept for training.
Packing: each document becomes [cls] + ids + [sep]; the train (and eval) documents are concatenated in
corpus order and cut into rows of seq_len. A document cut at a row end continues in the next row as a new
segment whose positions restart at 0. Only the last row of each split is padded (pad_id, segment 0).
Train order: grain MapDataset over row indices, shuffled with config.seed and reshuffled every epoch,
repeated forever, batched to the GLOBAL batch; process p keeps rows [p*local, (p+1)*local) of each batch,
so a step's data does not depend on the process count. Iterator state is {'step': n} for any num_workers.
Eval: held-out rows in fixed order; the last incomplete batch is padded with all-padding rows
(segment_ids 0), so loss weights must come from segment_ids > 0.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

from absl import flags
import grain
import numpy as np

from pretrain import sources
from pretrain.core.errors import ConfigError, require
from pretrain.core.tokenizer import TRAINER_VERSION, Tokenizer, train_sentencepiece

log = logging.getLogger(__name__)
_ENCODE_CHUNK = 1024  # documents encoded per call, to bound the memory of Python id lists
# Per-token kind in packed rows: document start, continuation, padding.
_START, _CONT, _PAD = 1, 0, -1


@dataclasses.dataclass
class DataPipeline:
  """Packed train/eval rows of one corpus; batches are dicts of int32 [local_batch, seq_len] arrays."""
  tokenizer: Tokenizer
  stats: dict[str, int]
  seq_len: int
  global_batch: int
  process_index: int
  process_count: int
  seed: int
  num_workers: int
  train_rows: 'PackedRows'
  eval_rows: 'PackedRows'

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def train_dataset(self, start_step: int = 0) -> grain.IterDataset:
    """This process's slice of global batches start_step, start_step + 1, ... (infinite)."""
    local = _LocalBatch(self.train_rows, self.process_index * self.local_batch, self.local_batch)
    ds = grain.MapDataset.range(len(self.train_rows.tokens)).shuffle(seed=self.seed).repeat()
    ds = ds.batch(self.global_batch, drop_remainder=True)[start_step:].map(local)
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if self.num_workers > 0:
      if not flags.FLAGS.is_parsed():  # grain workers read absl flags; tests and notebooks never parse them
        flags.FLAGS.mark_as_parsed()
      it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    return it

  def train_iterator(self) -> grain.DatasetIterator:
    """A fresh iterator from step 0; state {'step': n} (same for any num_workers), resumes exactly."""
    return _TrainIterator(self)

  def eval_batches(self, max_batches: int) -> list[dict[str, np.ndarray]]:
    """The first max_batches eval batches in fixed order; the last one padded with segment-0 rows."""
    rows = len(self.eval_rows.tokens)
    count = min(max_batches, -(-rows // self.global_batch))
    local = _LocalBatch(self.eval_rows, self.process_index * self.local_batch, self.local_batch)
    return [local(np.arange(b * self.global_batch, (b + 1) * self.global_batch)) for b in range(count)]


class _TrainIterator(grain.DatasetIterator):
  """Counts global batches itself, so its state does not depend on grain's worker layout."""

  def __init__(self, pipeline: DataPipeline):
    super().__init__()
    self._pipeline = pipeline
    self._step = 0
    self._it: grain.DatasetIterator | None = None

  def __next__(self) -> dict[str, np.ndarray]:
    if self._it is None:
      self._it = iter(self._pipeline.train_dataset(self._step))
    batch = next(self._it)
    self._step += 1
    return batch

  def get_state(self) -> dict[str, int]:
    return {'step': self._step}

  def set_state(self, state: dict[str, Any]) -> None:
    step = state.get('step') if isinstance(state, dict) else None
    require(isinstance(step, (int, np.integer)) and step >= 0,
            f'data iterator state: expected {{"step": n >= 0}}, got {state!r}')
    self._close_inner()
    self._step = int(step)

  def _get_next_index(self) -> int:
    return self._step

  def _set_next_index(self, index: int) -> None:
    self.set_state({'step': index})

  def _close_inner(self) -> None:
    if self._it is not None:
      self._it.close()
      self._it = None

  def close(self) -> None:
    self._close_inner()
    super().close()


@dataclasses.dataclass
class PackedRows:
  tokens: np.ndarray  # [rows, seq_len] int32
  kind: np.ndarray  # [rows, seq_len] int8: _START, _CONT or _PAD
  pad_id: int


@dataclasses.dataclass
class _LocalBatch:
  """Global batch of row indices -> this process's slice as model features (picklable for workers)."""
  rows: PackedRows
  start: int
  size: int

  def __call__(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.asarray(row_ids)[self.start:self.start + self.size]
    real = ids < len(self.rows.tokens)  # ids past the end are padding rows (eval only)
    ids = np.where(real, ids, 0)
    tokens = np.where(real[:, None], self.rows.tokens[ids], self.rows.pad_id)
    kind = np.where(real[:, None], self.rows.kind[ids], _PAD)
    return features(tokens, kind)


def features(tokens_bl: np.ndarray, kind_bl: np.ndarray) -> dict[str, np.ndarray]:
  """tokens/segment_ids/positions [batch, length]: segments start at documents and at column 0."""
  valid = kind_bl != _PAD
  col = np.arange(tokens_bl.shape[1])
  start = valid & ((kind_bl == _START) | (col == 0))
  segment_ids = np.cumsum(start, axis=1) * valid
  last_start = np.maximum.accumulate(np.where(start, col, 0), axis=1)
  positions = (col - last_start) * valid
  return {'tokens': tokens_bl.astype(np.int32), 'segment_ids': segment_ids.astype(np.int32),
          'positions': positions.astype(np.int32)}


def pack(docs: Sequence[str], tokenizer: Tokenizer, seq_len: int) -> PackedRows:
  """Encodes docs as [cls] + ids + [sep], concatenates them and cuts rows; the last row is padded."""
  tokens, kinds = [], []
  for i in range(0, len(docs), _ENCODE_CHUNK):
    for ids in tokenizer.encode_batch(docs[i:i + _ENCODE_CHUNK]):
      tokens.append(np.array([tokenizer.cls_id, *ids, tokenizer.sep_id], np.int32))
      kind = np.full(len(ids) + 2, _CONT, np.int8)
      kind[0] = _START
      kinds.append(kind)
  flat = np.concatenate(tokens) if tokens else np.zeros(0, np.int32)
  flat_kind = np.concatenate(kinds) if kinds else np.zeros(0, np.int8)
  pad = -len(flat) % seq_len
  flat = np.concatenate([flat, np.full(pad, tokenizer.pad_id, np.int32)])
  flat_kind = np.concatenate([flat_kind, np.full(pad, _PAD, np.int8)])
  return PackedRows(flat.reshape(-1, seq_len), flat_kind.reshape(-1, seq_len), tokenizer.pad_id)


def split_eval(docs: Sequence[str], eval_fraction: float) -> np.ndarray:
  """Boolean [docs] mask of held-out documents, a deterministic function of each text."""
  u = np.array([int.from_bytes(hashlib.blake2b(d.encode('utf-8', 'surrogatepass'), digest_size=8).digest(), 'big')
                for d in docs], np.uint64) / 2.0**64
  held = u < eval_fraction
  if eval_fraction > 0 and not held.any():
    held = u == u.min()
  if held.all():
    held = u < u.max()
  return held


def build_data(config: Any, *, process_index: int = 0, process_count: int = 1,
               tokenizer: Tokenizer | None = None) -> DataPipeline:
  """Reads, splits, tokenizes and packs `config.data.source`; see the module docstring."""
  source = str(_get(config, 'data.source'))
  seq_len = int(_get(config, 'data.seq_len'))
  eval_fraction = float(_get(config, 'data.eval_fraction'))
  max_doc_chars = int(_get(config, 'data.max_doc_chars'))
  num_workers = int(_get(config, 'data.num_workers'))
  vocab_size = int(_get(config, 'model.vocab_size'))
  batch = int(_get(config, 'train.batch_size'))
  tokenizer_path = str(_get(config, 'data.tokenizer') or '')
  require(seq_len >= 2, f'data.seq_len: must be >= 2, got {seq_len}')
  require(0 <= eval_fraction < 1, f'data.eval_fraction: must be in [0, 1), got {eval_fraction}')
  require(max_doc_chars >= 1, f'data.max_doc_chars: must be >= 1, got {max_doc_chars}')
  require(num_workers >= 0, f'data.num_workers: must be >= 0, got {num_workers}')
  require(vocab_size >= 1, f'model.vocab_size: must be >= 1, got {vocab_size}')
  require(batch >= 1, f'train.batch_size: must be >= 1, got {batch}')
  require(0 <= process_index < process_count, f'process_index {process_index} not in [0, {process_count})')
  require(batch % process_count == 0,
          f'train.batch_size: {batch} is not divisible by the process count {process_count}')
  if tokenizer is None and tokenizer_path:
    require(os.path.isfile(tokenizer_path), f"data.tokenizer: no such file '{tokenizer_path}'")
    tokenizer = Tokenizer.from_file(tokenizer_path)
  if tokenizer is not None:
    require(tokenizer.vocab_size <= vocab_size,
            f"data.tokenizer: '{tokenizer_path or 'checkpoint tokenizer'}' has {tokenizer.vocab_size} pieces, "
            f'more than model.vocab_size {vocab_size}')

  source_stats = sources.SourceStats()
  docs = list(sources.read_documents(source, max_doc_chars=max_doc_chars, stats=source_stats))
  counts = source_stats.as_dict()
  require(bool(docs), f"data.source: no documents in '{source}' after filtering ("
          + ', '.join(f'{k} {v}' for k, v in counts.items() if v) + ')')
  held = split_eval(docs, eval_fraction)
  train_docs = [d for d, h in zip(docs, held) if not h]
  eval_docs = [d for d, h in zip(docs, held) if h]
  if tokenizer is None:
    tokenizer = _cached_tokenizer(train_docs, vocab_size, int(_get(config, 'seed')))
  train_rows, eval_rows = pack(train_docs, tokenizer, seq_len), pack(eval_docs, tokenizer, seq_len)
  require(len(train_rows.tokens) >= batch,
          f'train.batch_size: {batch} exceeds the {len(train_rows.tokens)} training rows of data.seq_len '
          f"{seq_len} that data.source '{source}' gives; lower the batch or add text")

  stats = dict(counts, train_documents=len(train_docs), eval_documents=len(eval_docs),
               train_rows=len(train_rows.tokens), eval_rows=len(eval_rows.tokens),
               train_tokens=int((train_rows.kind != _PAD).sum()), eval_tokens=int((eval_rows.kind != _PAD).sum()),
               vocab_size=tokenizer.vocab_size)
  log.info('data %s: %s', source, ' '.join(f'{k}={v}' for k, v in stats.items()))
  return DataPipeline(tokenizer=tokenizer, stats=stats, seq_len=seq_len, global_batch=batch,
                      process_index=process_index, process_count=process_count,
                      seed=int(_get(config, 'seed')) % 2**32, num_workers=num_workers,
                      train_rows=train_rows, eval_rows=eval_rows)


def _cached_tokenizer(train_docs: Sequence[str], vocab_size: int, seed: int) -> Tokenizer:
  """Trains on the train split once; cached in cache_dir()/tokenizers keyed by content and settings."""
  key = hashlib.blake2b(f'v{TRAINER_VERSION} vocab={vocab_size} seed={seed}\0'.encode(), digest_size=16)
  for doc in train_docs:
    key.update(doc.encode('utf-8', 'surrogatepass'))
    key.update(b'\0')
  path = sources.cache_dir() / 'tokenizers' / f'spm-{vocab_size}-{key.hexdigest()}.model'
  if path.is_file():
    log.info('tokenizer: cached %s', path)
    return Tokenizer.from_file(path)
  log.info('tokenizer: training vocab %d on %d documents -> %s', vocab_size, len(train_docs), path)
  return train_sentencepiece(train_docs, vocab_size, path, seed=seed)


def _get(config: Any, dotted: str) -> Any:
  node = config
  for part in dotted.split('.'):
    try:
      node = node[part] if isinstance(node, dict) else getattr(node, part)
    except (AttributeError, KeyError):
      raise ConfigError(f'{dotted}: missing from the config') from None
  return node
