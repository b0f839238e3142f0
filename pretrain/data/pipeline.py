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
Row stores: batches read rows by index through `Rows` (`__len__`, `read(ids)`): PackedRows in memory, or
ArrayRecord shards written once by `python -m tools.prepare_data` (source `prepared:DIR`, pretrain/prepared.py),
where each process reads only its own rows. Both give the same batches for the same corpus and config.
Sentence pairs (mlm.sentence_task nsp or sop): rows are sentence_pairs.PairRows instead, one
[CLS] A [SEP] B [SEP] per row, whose batches add token_types and sentence_labels (in-memory sources only).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import os
from collections.abc import Sequence
from typing import Any, Protocol

from absl import flags
import grain
import numpy as np

from pretrain.data import prepared
from pretrain.data import sentence_pairs
from pretrain.data import sources
from pretrain.runtime.errors import ConfigError, require
from pretrain.data.tokenizer import TRAINER_VERSION, Tokenizer, text_batches, train_sentencepiece

log = logging.getLogger(__name__)
_ENCODE_CHUNK = 1024  # documents encoded per call (at most; see text_batches)
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
  train_rows: 'Rows'
  eval_rows: 'Rows'

  @property
  def local_batch(self) -> int:
    return self.global_batch // self.process_count

  def train_dataset(self, start_step: int = 0) -> grain.IterDataset:
    """This process's slice of global batches start_step, start_step + 1, ... (infinite)."""
    local = _LocalBatch(self.train_rows, self.process_index * self.local_batch, self.local_batch)
    ds = grain.MapDataset.range(len(self.train_rows)).shuffle(seed=self.seed).repeat()
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
    rows = len(self.eval_rows)
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


class Rows(Protocol):
  """Packed rows read by index: PackedRows (in memory) or prepared.ArrayRecordRows (shards on disk)."""
  pad_id: int
  seq_len: int

  def __len__(self) -> int: ...

  def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """tokens [len(ids), seq_len] and int8 kinds (_START, _CONT or _PAD) of rows `ids`."""


@dataclasses.dataclass
class PackedRows:
  tokens: np.ndarray  # [rows, seq_len] int32
  kind: np.ndarray  # [rows, seq_len] int8: _START, _CONT or _PAD
  pad_id: int

  @property
  def seq_len(self) -> int:
    return self.tokens.shape[1]

  def __len__(self) -> int:
    return len(self.tokens)

  def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.tokens[ids], self.kind[ids]


@dataclasses.dataclass
class _LocalBatch:
  """Global batch of row indices -> this process's slice as model features (picklable for workers)."""
  rows: Rows
  start: int
  size: int

  def __call__(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
    ids = np.asarray(row_ids)[self.start:self.start + self.size]
    if isinstance(self.rows, sentence_pairs.PairRows):  # one sentence pair per row, with token types and a label
      return self.rows.batch(ids)
    real = ids < len(self.rows)  # ids past the end are padding rows (eval only)
    tokens = np.full((len(ids), self.rows.seq_len), self.rows.pad_id, np.int32)
    kind = np.full(tokens.shape, _PAD, np.int8)
    tokens[real], kind[real] = self.rows.read(ids[real])
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
  return cut_rows(*encode_documents(docs, tokenizer), seq_len, tokenizer.pad_id)


def encode_documents(docs: Sequence[str], tokenizer: Tokenizer,
                     num_threads: int = -1) -> tuple[np.ndarray, np.ndarray]:
  """[cls] + ids + [sep] of each document, concatenated: int32 tokens and int8 kinds (_START, _CONT)."""
  tokens, kinds = [np.zeros(0, np.int32)], [np.zeros(0, np.int8)]
  cls, sep = [tokenizer.cls_id], [tokenizer.sep_id]
  for batch in text_batches(docs, _ENCODE_CHUNK):
    ids = tokenizer.encode_batch(batch, num_threads=num_threads)
    lengths = np.array([len(x) + 2 for x in ids], np.int64)
    tokens.append(np.fromiter(itertools.chain.from_iterable(cls + x + sep for x in ids), np.int32,
                              count=int(lengths.sum())))
    kinds.append(np.full(len(tokens[-1]), _CONT, np.int8))
    kinds[-1][np.cumsum(lengths) - lengths] = _START
  return np.concatenate(tokens), np.concatenate(kinds)


def cut_rows(flat: np.ndarray, flat_kind: np.ndarray, seq_len: int, pad_id: int) -> PackedRows:
  """Rows of seq_len cut from a token stream; the last one padded (pad_id, _PAD)."""
  pad = -len(flat) % seq_len
  flat = np.concatenate([flat, np.full(pad, pad_id, flat.dtype)])
  flat_kind = np.concatenate([flat_kind, np.full(pad, _PAD, np.int8)])
  return PackedRows(flat.reshape(-1, seq_len), flat_kind.reshape(-1, seq_len), pad_id)


def split_eval(docs: Sequence[str], eval_fraction: float) -> np.ndarray:
  """Boolean [docs] mask of held-out documents, a deterministic function of each text."""
  u = np.array([text_hash(d) for d in docs], np.float64)
  if not len(u):
    return np.zeros(0, bool)
  return held_out(u, eval_fraction, u.min(), u.max())


def text_hash(doc: str) -> float:
  """blake2b of the text as a number in [0, 1): the eval split holds out small ones."""
  digest = hashlib.blake2b(doc.encode('utf-8', 'surrogatepass'), digest_size=8).digest()
  return int.from_bytes(digest, 'big') / 2.0**64


def held_out(u: np.ndarray, eval_fraction: float, u_min: float = 0.0, u_max: float = 1.0) -> np.ndarray:
  """Held-out mask of hashes `u` given the corpus' smallest and largest hash: u < eval_fraction, but when
  eval_fraction > 0 at least one distinct text is held out, and at least one is kept for training.
  The defaults give the plain rule, which a one-pass reader uses before it knows the corpus' bounds."""
  if eval_fraction > 0 and u_min >= eval_fraction:  # nothing below: hold out the smallest (unless all are)
    return (u == u_min) & (u < u_max)
  if u_max < eval_fraction:  # everything below: keep the largest for training
    return u < u_max
  return u < eval_fraction


def build_data(config: Any, *, process_index: int = 0, process_count: int = 1,
               tokenizer: Tokenizer | None = None) -> DataPipeline:
  """Reads, splits, tokenizes and packs `config.data.source` (or opens a prepared one); see the module docstring."""
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
  sentence_task = _sentence_task(config)
  require(sentence_task == 'none' or not source.startswith(prepared.SCHEME),
          f"mlm.sentence_task: '{sentence_task}' builds sentence pairs from documents, but '{source}' holds packed "
          'rows; use the source it was prepared from')
  if source.startswith(prepared.SCHEME):  # tokenized and packed once by `python -m tools.prepare_data`
    corpus = prepared.open_prepared(source, seq_len=seq_len, tokenizer=tokenizer, tokenizer_path=tokenizer_path,
                                    eval_fraction=eval_fraction, max_doc_chars=max_doc_chars)
    _check_vocab_size(corpus.tokenizer, corpus.tokenizer_path, vocab_size)
    tokenizer, counts, train_rows, eval_rows = corpus.tokenizer, corpus.counts, corpus.train_rows, corpus.eval_rows
  else:
    tokenizer, counts, train_rows, eval_rows = _read_and_pack(
        source, seq_len=seq_len, eval_fraction=eval_fraction, max_doc_chars=max_doc_chars, vocab_size=vocab_size,
        seed=int(_get(config, 'seed')), tokenizer=tokenizer, tokenizer_path=tokenizer_path,
        sentence_task=sentence_task)
  require(len(train_rows) >= batch,
          f'train.batch_size: {batch} exceeds the {len(train_rows)} training rows of data.seq_len '
          f"{seq_len} that data.source '{source}' gives; lower the batch or add text")

  stats = dict(counts, vocab_size=tokenizer.vocab_size)
  log.info('data %s: %s', source, ' '.join(f'{k}={v}' for k, v in stats.items()))
  return DataPipeline(tokenizer=tokenizer, stats=stats, seq_len=seq_len, global_batch=batch,
                      process_index=process_index, process_count=process_count,
                      seed=int(_get(config, 'seed')) % 2**32, num_workers=num_workers,
                      train_rows=train_rows, eval_rows=eval_rows)


def _read_and_pack(source: str, *, seq_len: int, eval_fraction: float, max_doc_chars: int, vocab_size: int,
                   seed: int, tokenizer: Tokenizer | None, tokenizer_path: str, sentence_task: str = 'none'
                   ) -> tuple[Tokenizer, dict[str, int], Rows, Rows]:
  """The in-memory row store: the whole corpus read, split, tokenized and packed (or paired) here."""
  if tokenizer is None and tokenizer_path:
    require(os.path.isfile(tokenizer_path), f"data.tokenizer: no such file '{tokenizer_path}'")
    tokenizer = Tokenizer.from_file(tokenizer_path)
  if tokenizer is not None:
    _check_vocab_size(tokenizer, tokenizer_path or 'checkpoint tokenizer', vocab_size)

  source_stats = sources.SourceStats()
  docs = list(sources.read_documents(source, max_doc_chars=max_doc_chars, stats=source_stats))
  counts = source_stats.as_dict()
  held = split_eval(docs, eval_fraction)
  train_docs = [d for d, h in zip(docs, held) if not h]
  eval_docs = [d for d, h in zip(docs, held) if h]
  if tokenizer is None:
    tokenizer = _cached_tokenizer(train_docs, vocab_size, seed)
  if sentence_task == 'none':
    train_rows, eval_rows = pack(train_docs, tokenizer, seq_len), pack(eval_docs, tokenizer, seq_len)
  else:  # one BERT sentence pair per row (pretrain/sentence_pairs.py)
    train_rows, eval_rows = (sentence_pairs.pair_rows(split_docs, tokenizer, seq_len, sentence_task, seed, split)
                             for split_docs, split in ((train_docs, 'train'), (eval_docs, 'eval')))
  counts.update(train_documents=len(train_docs), eval_documents=len(eval_docs),
                train_rows=len(train_rows), eval_rows=len(eval_rows),
                train_tokens=_num_tokens(train_rows), eval_tokens=_num_tokens(eval_rows))
  return tokenizer, counts, train_rows, eval_rows


def _num_tokens(rows: Rows) -> int:
  return rows.num_tokens if isinstance(rows, sentence_pairs.PairRows) else int((rows.kind != _PAD).sum())


def _sentence_task(config: Any) -> str:
  """mlm.sentence_task; 'none' for configs without one (data-only configs)."""
  try:
    return str(_get(config, 'mlm.sentence_task'))
  except ConfigError:
    return 'none'


def _check_vocab_size(tokenizer: Tokenizer, name: str, vocab_size: int) -> None:
  require(tokenizer.vocab_size <= vocab_size,
          f"data.tokenizer: '{name}' has {tokenizer.vocab_size} pieces, more than model.vocab_size {vocab_size}")


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
