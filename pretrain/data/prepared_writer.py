"""Writes `prepared:DIR` (the format is in pretrain/data/prepared.py): a source streamed in chunks through worker
processes that tokenize, in order, so memory stays bounded and the output is deterministic.

The rows are bit for bit those the in-memory pipeline packs for the same source, tokenizer, seq_len,
eval_fraction and max_doc_chars (`packing.pack` of the `split.split_eval` train and eval documents). A corpus
where the plain split rule holds out nothing (or everything) is read twice: the fallback needs the corpus'
smallest and largest text hash. DIR is written to a temporary directory and renamed into place when complete.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import pathlib
import shutil
import time
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from pretrain.data import prepared, sources
from pretrain.data.packing import cut_rows, encode_documents
from pretrain.data.split import held_out, text_hash
from pretrain.data.tokenizer import Tokenizer
from pretrain.runtime.files import atomic_directory

_CHUNK_DOCS, _CHUNK_CHARS = 512, 1 << 20  # documents per task sent to a worker (at most)
SHARD_BYTES = 64 << 20  # default shard size (raw record bytes)


@dataclasses.dataclass(frozen=True)
class WriteOptions:
  source: str
  tokenizer: str  # the SentencePiece .model file (copied into DIR)
  seq_len: int
  eval_fraction: float = 0.02
  max_doc_chars: int = 100_000
  records_per_shard: int = 0  # 0: about SHARD_BYTES of rows per shard
  workers: int = 1
  progress_every: float = 10.0  # seconds between progress lines


def write_prepared(options: WriteOptions, out: str) -> dict:
  """Writes DIR `out` (which must not exist, or be empty); returns its prepared.json."""
  tokenizer = Tokenizer.from_file(options.tokenizer)
  stats = sources.SourceStats()
  docs = sources.read_documents(options.source, max_doc_chars=options.max_doc_chars, stats=stats, field='--source')
  with atomic_directory(out) as tmp:
    shutil.copyfile(options.tokenizer, tmp / 'tokenizer.model')
    result = _write_pass(docs, stats, tokenizer, options, tmp, bounds=None)
    if result.needs_bounds:
      print(f'prepare_data: the split holds out {result.counts["eval_documents"]} of '
            f'{result.counts["documents"]} documents; reading again with the fallback rule', flush=True)
      for path in tmp.glob('*.array_record'):
        path.unlink()
      stats = sources.SourceStats()
      docs = sources.read_documents(options.source, max_doc_chars=options.max_doc_chars, stats=stats,
                                    field='--source')
      result = _write_pass(docs, stats, tokenizer, options, tmp, bounds=result.bounds)
    manifest = {
        'format': prepared.FORMAT, 'version': prepared.VERSION, 'source': options.source,
        'seq_len': options.seq_len, 'tokenizer': 'tokenizer.model', 'vocab_size': tokenizer.vocab_size,
        'token_dtype': prepared.token_dtype(tokenizer.vocab_size), 'eval_fraction': options.eval_fraction,
        'max_doc_chars': options.max_doc_chars, 'counts': result.counts, 'shards': result.shards}
    (tmp / prepared.MANIFEST).write_text(json.dumps(manifest, indent=2) + '\n', encoding='utf-8')
  return manifest


@dataclasses.dataclass
class _PassResult:
  counts: dict[str, int]
  shards: dict[str, list[str]]
  bounds: tuple[float, float]  # the corpus' smallest and largest text hash
  needs_bounds: bool  # the plain split rule differs from split_eval's: a second pass with `bounds` is needed


def _write_pass(docs: Iterator[str], stats: sources.SourceStats, tokenizer: Tokenizer, options: WriteOptions,
                out: pathlib.Path, bounds: tuple[float, float] | None) -> _PassResult:
  """One read of the source: split by text hash, tokenize in workers, pack, write the shards."""
  record_bytes = options.seq_len * (np.dtype(prepared.token_dtype(tokenizer.vocab_size)).itemsize + 1)
  per_shard = options.records_per_shard or max(1, SHARD_BYTES // record_bytes)
  writers = {split: _SplitWriter(out, split, options.seq_len, tokenizer, per_shard) for split in prepared.SPLITS}
  encode = functools.partial(_encode_chunk, eval_fraction=options.eval_fraction, bounds=bounds)
  progress = _Progress(options.progress_every)
  u_min, u_max = np.inf, -np.inf
  for u, streams in _ordered_map(encode, _chunks(docs), options.workers, tokenizer.to_bytes()):
    u_min, u_max = min(u_min, u.min()), max(u_max, u.max())
    for split, (tokens, kind, count) in zip(prepared.SPLITS, streams):
      writers[split].add(tokens, kind, count)
    progress.update(len(u), sum(len(s[0]) for s in streams), writers)
  counts = stats.as_dict()  # read_documents raised if nothing was left
  shards = {split: writer.close() for split, writer in writers.items()}
  progress.update(0, 0, writers, final=True)
  for split, writer in writers.items():
    counts.update({f'{split}_documents': writer.documents, f'{split}_rows': writer.rows,
                   f'{split}_tokens': writer.tokens, f'{split}_shards': len(shards[split])})
  f = options.eval_fraction
  needs_bounds = bounds is None and ((f > 0 and u_min >= f) or u_max < f)
  return _PassResult(counts, shards, (float(u_min), float(u_max)), needs_bounds)


_worker_tokenizer: Tokenizer | None = None


def _init_worker(tokenizer_bytes: bytes) -> None:
  global _worker_tokenizer
  _worker_tokenizer = Tokenizer.from_bytes(tokenizer_bytes)


def _encode_chunk(texts: list[str], eval_fraction: float, bounds: tuple[float, float] | None):
  """Text hashes [n] and, per split, the chunk's token stream (packed-row dtype), kinds and document count."""
  u = np.array([text_hash(t) for t in texts], np.float64)
  held = held_out(u, eval_fraction, *(bounds or ()))
  dtype = prepared.token_dtype(_worker_tokenizer.vocab_size)
  streams = []
  for mask in (~held, held):
    split_texts = [t for t, keep in zip(texts, mask) if keep]
    tokens, kind = encode_documents(split_texts, _worker_tokenizer, num_threads=1)
    streams.append((tokens.astype(dtype), kind, len(split_texts)))
  return u, streams


def _ordered_map(fn: Callable, items: Iterable, workers: int, tokenizer_bytes: bytes) -> Iterator:
  """fn over items in `workers` processes, results in order, at most 2 * workers tasks in flight."""
  if workers == 1:
    _init_worker(tokenizer_bytes)
    yield from map(fn, items)
    return
  # spawn: the parent may have started threads (jax, grain) that fork would copy half-way
  pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context('spawn'),
                                                initializer=_init_worker, initargs=(tokenizer_bytes,))
  try:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(fn, item))
      if len(pending) >= 2 * workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(cancel_futures=True)


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
  chunk, chars = [], 0
  for doc in docs:
    chunk.append(doc)
    chars += len(doc)
    if len(chunk) >= _CHUNK_DOCS or chars >= _CHUNK_CHARS:
      yield chunk
      chunk, chars = [], 0
  if chunk:
    yield chunk


class _SplitWriter:
  """One split's token stream -> rows of seq_len (the last one padded, as `pack`) -> numbered shard files."""

  def __init__(self, out: pathlib.Path, split: str, seq_len: int, tokenizer: Tokenizer, records_per_shard: int):
    self._out, self._split, self._seq_len, self._per_shard = out, split, seq_len, records_per_shard
    self._pad_id, self._dtype = tokenizer.pad_id, prepared.token_dtype(tokenizer.vocab_size)
    self._carry = (np.zeros(0, self._dtype), np.zeros(0, np.int8))  # tokens after the last full row
    self._paths: list[pathlib.Path] = []
    self._writer = None
    self.documents = self.rows = self.tokens = 0

  def add(self, tokens: np.ndarray, kind: np.ndarray, documents: int) -> None:
    tokens, kind = np.concatenate([self._carry[0], tokens]), np.concatenate([self._carry[1], kind])
    full = len(tokens) - len(tokens) % self._seq_len
    self._write(tokens[:full], kind[:full])
    self._carry = tokens[full:], kind[full:]
    self.documents += documents

  def close(self) -> list[str]:
    """Writes the padded last row, closes the shards and names them -NNNNN-of-MMMMM; returns the names."""
    self._write(*self._carry)
    if self._writer is not None:
      self._writer.close()
    names = [prepared.shard_name(self._split, i, len(self._paths)) for i in range(len(self._paths))]
    for path, name in zip(self._paths, names):
      path.rename(self._out / name)
    return names

  def _write(self, tokens: np.ndarray, kind: np.ndarray) -> None:
    rows = cut_rows(tokens, kind, self._seq_len, self._pad_id)
    for record in prepared.encode_records(rows.tokens, rows.kind, self._dtype):
      if self._writer is None or self.rows % self._per_shard == 0:
        if self._writer is not None:
          self._writer.close()
        self._paths.append(self._out / f'{self._split}-{len(self._paths):05d}.partial')
        self._writer = ArrayRecordWriter(str(self._paths[-1]), prepared.WRITER_OPTIONS)
      self._writer.write(record)
      self.rows += 1
    self.tokens += len(tokens)


class _Progress:
  """Prints documents, tokens/s and rows written every `every` seconds."""

  def __init__(self, every: float):
    self._every, self._started = every, time.perf_counter()
    self._last = self._started
    self.documents = self.tokens = 0

  def update(self, documents: int, tokens: int, writers: dict[str, _SplitWriter], final: bool = False) -> None:
    self.documents += documents
    self.tokens += tokens
    now = time.perf_counter()
    if not final and now - self._last < self._every:
      return
    self._last = now
    elapsed = max(now - self._started, 1e-9)
    rows = ', '.join(f'{w.rows:,} {split}' for split, w in writers.items())
    print(f'prepare_data: {self.documents:,} documents ({self.documents / elapsed:,.0f}/s), {self.tokens:,} tokens '
          f'({self.tokens / elapsed:,.0f}/s), rows written: {rows}, {elapsed:.0f}s', flush=True)
