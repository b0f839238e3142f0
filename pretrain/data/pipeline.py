"""DataSettings -> documents -> tokenizer -> packed rows -> grain batches, resumable and sliced per process.

Split (pretrain/data/split.py): a document is held out for eval when blake2b(text) / 2**64 < data.eval_fraction.
Packing (pretrain/data/packing.py): each document becomes [cls] + ids + [sep]; the train (and eval) documents
are concatenated in corpus order and cut into rows of seq_len.
Train order: grain MapDataset over row indices, shuffled with the seed and reshuffled every epoch,
repeated forever, batched to the GLOBAL batch; process p keeps rows [p*local, (p+1)*local) of each batch,
so a step's data does not depend on the process count. Iterator state is {'step': n, 'fingerprint': {...}} for any
num_workers; the fingerprint (pretrain/data/fingerprint.py: counts and a hash of the rows) stops a resume on a
changed corpus unless data.allow_source_change (a state without one, from older checkpoints, is not checked).
Eval: held-out rows in fixed order; the last incomplete batch is padded with all-padding rows
(segment_ids 0), so loss weights must come from segment_ids > 0.
Row stores: batches read rows by index through packing.Rows (`__len__`, `batch(ids)`): PackedRows in memory, or
ArrayRecord shards written once by `python -m tools.prepare_data` (source `prepared:DIR`,
pretrain/data/prepared.py), where each process reads only its own rows. Both give the same batches for the same
corpus and settings. Sentence pairs (mlm.sentence_task nsp or sop): rows are sentence_pairs.PairRows instead, one
[CLS] A [SEP] B [SEP] per row, whose batches add token_types and sentence_labels (in-memory sources only).
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

from pretrain.data import fingerprint, prepared, sentence_pairs, sources
from pretrain.data.packing import Rows, pack
from pretrain.data.settings import DataSettings
from pretrain.data.split import split_eval
from pretrain.data.tokenizer import TRAINER_VERSION, Tokenizer, train_sentencepiece
from pretrain.runtime.errors import require

log = logging.getLogger(__name__)


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
  train_rows: Rows
  eval_rows: Rows
  source: str  # data.source
  fingerprint: dict[str, Any]  # what this process read (pretrain/data/fingerprint.py), JSON-able
  allow_source_change: bool = False  # data.allow_source_change: resume on other rows with a warning

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
    """A fresh iterator from step 0; state {'step': n, 'fingerprint': {...}} (same for any num_workers), resumes
    exactly."""
    return _TrainIterator(self)

  def check_processes_agree(self, fingerprints: Sequence[dict[str, Any]]) -> None:
    """One ConfigError naming data.source unless every process (fingerprints in process order) read alike."""
    fingerprint.check_processes_agree(self.source, fingerprints)

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

  def get_state(self) -> dict[str, Any]:
    return {'step': self._step, 'fingerprint': dict(self._pipeline.fingerprint)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Resumes at state['step']; a state with another fingerprint (a checkpoint's, of a changed corpus) is a
    ConfigError naming data.source, or a warning with data.allow_source_change."""
    step = state.get('step') if isinstance(state, dict) else None
    saved = state.get('fingerprint', {}) if isinstance(state, dict) else None
    require(isinstance(step, (int, np.integer)) and step >= 0 and isinstance(saved, dict),
            f'data iterator state: expected {{"step": n >= 0, "fingerprint": {{...}}}}, got {state!r}')
    data = self._pipeline
    if saved:
      fingerprint.check_resume(data.source, saved, data.fingerprint, int(step), data.allow_source_change)
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
class _LocalBatch:
  """Global batch of row indices -> this process's slice as model features (picklable for workers)."""
  rows: Rows
  start: int
  size: int

  def __call__(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
    return self.rows.batch(np.asarray(row_ids)[self.start:self.start + self.size])


def build_data(data: DataSettings, *, batch_size: int, vocab_size: int, seed: int, sentence_task: str = 'none',
               process_index: int = 0, process_count: int = 1, tokenizer: Tokenizer | None = None) -> DataPipeline:
  """Reads, splits, tokenizes and packs `data.source` (or opens a prepared one); see the module docstring.

  batch_size: the global batch (train.batch_size); vocab_size: the model's (a tokenizer trained here gets it);
  sentence_task: mlm.sentence_task ('nsp' or 'sop': sentence-pair rows). tokenizer: a checkpoint's, else
  data.tokenizer, else one trained on the train split.
  """
  source, seq_len, tokenizer_path = data.source, data.seq_len, data.tokenizer
  require(vocab_size >= 1, f'model.vocab_size: must be >= 1, got {vocab_size}')
  require(batch_size >= 1, f'train.batch_size: must be >= 1, got {batch_size}')
  require(0 <= process_index < process_count, f'process_index {process_index} not in [0, {process_count})')
  require(batch_size % process_count == 0,
          f'train.batch_size: {batch_size} is not divisible by the process count {process_count}')
  require(sentence_task == 'none' or not data.prepared,
          f"mlm.sentence_task: '{sentence_task}' builds sentence pairs from documents, but '{source}' holds packed "
          'rows; use the source it was prepared from')
  if data.prepared:  # tokenized and packed once by `python -m tools.prepare_data`
    corpus = prepared.open_prepared(source, seq_len=seq_len, tokenizer=tokenizer, tokenizer_path=tokenizer_path,
                                    eval_fraction=data.eval_fraction, max_doc_chars=data.max_doc_chars)
    _check_vocab_size(corpus.tokenizer, corpus.tokenizer_path, vocab_size)
    tokenizer, counts, train_rows, eval_rows = corpus.tokenizer, corpus.counts, corpus.train_rows, corpus.eval_rows
    read = corpus.fingerprint
  else:
    tokenizer, counts, train_rows, eval_rows = _read_and_pack(
        data, vocab_size=vocab_size, seed=seed, tokenizer=tokenizer, sentence_task=sentence_task)
    read = fingerprint.of_rows(counts, train_rows, eval_rows)
  require(len(train_rows) >= batch_size,
          f'train.batch_size: {batch_size} exceeds the {len(train_rows)} training rows of data.seq_len '
          f"{seq_len} that data.source '{source}' gives; lower the batch or add text")

  stats = dict(counts, vocab_size=tokenizer.vocab_size)
  log.info('data %s: %s hash=%s', source, ' '.join(f'{k}={v}' for k, v in stats.items()), read['hash'])
  return DataPipeline(tokenizer=tokenizer, stats=stats, seq_len=seq_len, global_batch=batch_size,
                      process_index=process_index, process_count=process_count, seed=seed % 2**32,
                      num_workers=data.num_workers, train_rows=train_rows, eval_rows=eval_rows, source=source,
                      fingerprint=read, allow_source_change=data.allow_source_change)


def _read_and_pack(data: DataSettings, *, vocab_size: int, seed: int, tokenizer: Tokenizer | None,
                   sentence_task: str) -> tuple[Tokenizer, dict[str, int], Rows, Rows]:
  """The in-memory row store: the whole corpus read, split, tokenized and packed (or paired) here."""
  source, seq_len, tokenizer_path = data.source, data.seq_len, data.tokenizer
  if tokenizer is None and tokenizer_path:
    require(os.path.isfile(tokenizer_path), f"data.tokenizer: no such file '{tokenizer_path}'")
    tokenizer = Tokenizer.from_file(tokenizer_path)
  if tokenizer is not None:
    _check_vocab_size(tokenizer, tokenizer_path or 'checkpoint tokenizer', vocab_size)

  source_stats = sources.SourceStats()
  docs = list(sources.read_documents(source, max_doc_chars=data.max_doc_chars, stats=source_stats))
  counts = source_stats.as_dict()
  held = split_eval(docs, data.eval_fraction)
  train_docs = [d for d, h in zip(docs, held) if not h]
  eval_docs = [d for d, h in zip(docs, held) if h]
  if tokenizer is None:
    tokenizer = _cached_tokenizer(train_docs, vocab_size, seed)
  if sentence_task == 'none':
    train_rows, eval_rows = pack(train_docs, tokenizer, seq_len), pack(eval_docs, tokenizer, seq_len)
  else:  # one BERT sentence pair per row (pretrain/data/sentence_pairs.py)
    train_rows, eval_rows = (sentence_pairs.pair_rows(split_docs, tokenizer, seq_len, sentence_task, seed, split)
                             for split_docs, split in ((train_docs, 'train'), (eval_docs, 'eval')))
  counts.update(train_documents=len(train_docs), eval_documents=len(eval_docs),
                train_rows=len(train_rows), eval_rows=len(eval_rows),
                train_tokens=train_rows.num_tokens, eval_tokens=eval_rows.num_tokens)
  return tokenizer, counts, train_rows, eval_rows


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
