"""The on-disk row store of `prepared:DIR`: a corpus tokenized and packed once (pretrain/data/prepared_writer.py, run
by `python -m tools.prepare_data`), and read here.

DIR holds
  train-00000-of-00012.array_record ...   packed train rows, in corpus order across the shards
  eval-00000-of-00001.array_record ...    held-out rows (no eval shards when nothing is held out)
  tokenizer.model                         the SentencePiece model the rows were encoded with
  prepared.json                           format, version, source, seq_len, vocab_size, token_dtype,
                                          eval_fraction, max_doc_chars, counts, shards
Record layout: one ArrayRecord record per row of seq_len tokens, raw little-endian bytes: the seq_len tokens as
`token_dtype` (uint16 when the vocabulary has at most 65536 pieces, else int32), then seq_len int8 kinds (1
document start, 0 continuation, -1 padding): 3 * seq_len bytes per row with uint16. Files are written with
group_size:1 (each record its own zstd chunk), so any row is read without its neighbours.
The rows are bit for bit those `pretrain.data.packing.pack` makes of the same source, split, tokenizer and seq_len.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from typing import Any

import grain
import numpy as np

from pretrain.data import fingerprint
from pretrain.data.packing import KindRows
from pretrain.data.tokenizer import Tokenizer
from pretrain.runtime.errors import ConfigError, first_line, require

log = logging.getLogger(__name__)
SCHEME = 'prepared:'
FORMAT = 'flax-pretrain-prepared'
VERSION = 1
MANIFEST = 'prepared.json'
WRITER_OPTIONS = 'group_size:1'
SPLITS = ('train', 'eval')
# counts in prepared.json: what the in-memory pipeline reports as stats (sources.SourceStats + the split).
SPLIT_COUNTS = ('train_documents', 'eval_documents', 'train_rows', 'eval_rows', 'train_tokens', 'eval_tokens')


def token_dtype(vocab_size: int) -> str:
  return '<u2' if vocab_size <= 2**16 else '<i4'


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def encode_records(tokens_rl: np.ndarray, kind_rl: np.ndarray, dtype: str) -> list[bytes]:
  """Rows -> records: the row's tokens as `dtype`, then its int8 kinds."""
  rows, seq_len = tokens_rl.shape
  tokens_rb = tokens_rl.astype(dtype).view(np.uint8).reshape(rows, seq_len * np.dtype(dtype).itemsize)
  records_rb = np.concatenate([tokens_rb, kind_rl.astype(np.int8).view(np.uint8)], axis=1)
  return [row.tobytes() for row in records_rb]


@dataclasses.dataclass
class ArrayRecordRows(KindRows):
  """Rows of ArrayRecord shards, read by global index (picklable: grain workers reopen the files)."""
  paths: list[str]
  seq_len: int
  dtype: str
  pad_id: int

  def __post_init__(self):
    self._source = grain.sources.ArrayRecordDataSource(self.paths) if self.paths else None

  def __len__(self) -> int:
    return len(self._source) if self._source is not None else 0

  def read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # One record at a time: on local disk 2-3x faster than __getitems__, which starts a thread pool per call.
    # Parallel reads come from grain's worker processes (data.num_workers).
    ids = np.asarray(ids)
    records = [self._source[i] for i in ids.tolist()]
    buffer_rb = np.frombuffer(b''.join(records), np.uint8).reshape(len(ids), -1)
    token_bytes = self.seq_len * np.dtype(self.dtype).itemsize
    require(buffer_rb.shape[1] == token_bytes + self.seq_len,
            f'{self.paths[0]}: records of {buffer_rb.shape[1]} bytes, expected {token_bytes + self.seq_len}')
    tokens = np.ascontiguousarray(buffer_rb[:, :token_bytes]).view(self.dtype)
    return tokens.astype(np.int32), buffer_rb[:, token_bytes:].view(np.int8)


@dataclasses.dataclass
class PreparedCorpus:
  tokenizer: Tokenizer
  tokenizer_path: str
  counts: dict[str, int]  # sources.SourceStats fields and SPLIT_COUNTS
  train_rows: ArrayRecordRows
  eval_rows: ArrayRecordRows
  fingerprint: dict[str, Any]  # fingerprint.of_prepared: alike in every process


def open_prepared(source: str, *, seq_len: int, tokenizer: Tokenizer | None = None, tokenizer_path: str = '',
                  eval_fraction: float | None = None, max_doc_chars: int | None = None) -> PreparedCorpus:
  """Opens `prepared:DIR` for training; every mismatch is one ConfigError naming the config field.

  `tokenizer` (a checkpoint's) or else `tokenizer_path` (data.tokenizer) must be DIR's own tokenizer.model.
  The split and document chunking were fixed when DIR was prepared: other eval_fraction or max_doc_chars
  settings only get a warning.
  """
  root = pathlib.Path(source[len(SCHEME):]).expanduser()
  where = f"data.source: '{source}'"
  require(root.is_dir(), f'{where}: no such directory (make one with python -m tools.prepare_data)')
  manifest = read_manifest(root, where)
  require(manifest['seq_len'] == seq_len,
          f"data.seq_len: {seq_len} differs from the seq_len {manifest['seq_len']} that {source} was prepared "
          f"with; set data.seq_len={manifest['seq_len']} or prepare the corpus again")
  for name, value in (('eval_fraction', eval_fraction), ('max_doc_chars', max_doc_chars)):
    if value is not None and value != manifest.get(name):
      log.warning('data.%s=%s does not apply to %s, prepared with %s=%s', name, value, source, name,
                  manifest.get(name))
  own_path = root / 'tokenizer.model'
  try:
    own = Tokenizer.from_file(own_path)
  except ConfigError as e:
    raise ConfigError(f'{where}: {e}') from None
  if tokenizer is not None:
    require(tokenizer.to_meta() == own.to_meta(),
            f"{where} was tokenized with {own_path}, not with the checkpoint's tokenizer")
  elif tokenizer_path:
    path = pathlib.Path(tokenizer_path)
    require(path.is_file(), f"data.tokenizer: no such file '{tokenizer_path}'")
    require(path.read_bytes() == own.to_bytes(),
            f"data.tokenizer: '{tokenizer_path}' is not the tokenizer {source} was prepared with ({own_path}); "
            "set data.tokenizer='' to use that one")
  rows = {}
  for split in SPLITS:
    paths = [str(root / name) for name in manifest['shards'][split]]
    try:
      rows[split] = ArrayRecordRows(paths, seq_len, manifest['token_dtype'], own.pad_id)
      count = len(rows[split])
      if count:
        rows[split].read(np.array([0, count - 1]))
    except Exception as e:  # pylint: disable=broad-except  # missing, truncated or foreign shard files
      raise ConfigError(f'{where}: cannot read its {split} shards ({first_line(e)})') from None
    expected = manifest['counts'][f'{split}_rows']
    require(count == expected, f'{where}: its {split} shards hold {count} rows, prepared.json says {expected}')
  shards = rows['train'].paths + rows['eval'].paths
  return PreparedCorpus(own, str(own_path), dict(manifest['counts']), rows['train'], rows['eval'],
                        fingerprint.of_prepared(manifest, shards, own.to_bytes()))


def read_manifest(root: pathlib.Path, where: str) -> dict[str, Any]:
  """prepared.json of `root`, checked for the fields training needs."""
  path = root / MANIFEST
  try:
    manifest = json.loads(path.read_text(encoding='utf-8'))
  except (OSError, ValueError) as e:
    raise ConfigError(f'{where}: cannot read {path} ({first_line(e)})') from None
  require(isinstance(manifest, dict) and manifest.get('format') == FORMAT,
          f'{where}: {path} is not a {FORMAT} manifest')
  require(manifest.get('version') == VERSION,
          f"{where}: {path} has format version {manifest.get('version')}, this code reads {VERSION}; "
          'prepare the corpus again')
  try:
    ok = (isinstance(manifest['seq_len'], int) and manifest['token_dtype'] in ('<u2', '<i4')
          and all(isinstance(manifest['shards'][s], list) for s in SPLITS)
          and all(isinstance(manifest['counts'][k], int) for k in SPLIT_COUNTS))
  except (KeyError, TypeError):
    ok = False
  require(ok, f'{where}: {path} lacks seq_len, token_dtype, shards or counts')
  return manifest
