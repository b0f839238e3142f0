"""What a process read, as a few counts and a hash: {'documents', 'train_rows', 'train_tokens', 'eval_rows', 'hash'}.

Processes compare theirs before the first step (pretrain/train.py), since each reads the corpus itself and skips
unreadable files on its own; a resumed run compares its own with the checkpoint's (the train iterator's state).
In-memory sources: blake2b over every array of the packed train and eval rows, which every process holds whole, so
any changed document changes it. prepared:DIR: each process reads only its own rows, so the hash covers what all
read alike: prepared.json, the size of every shard file and the tokenizer.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from pretrain.runtime.errors import ConfigError

COUNTS = ('documents', 'train_rows', 'train_tokens', 'eval_rows')
_SHOWN = 12  # hex digits of the hash in messages
log = logging.getLogger(__name__)


def of_rows(counts: dict[str, int], train_rows, eval_rows) -> dict[str, Any]:
  """Of an in-memory row store (packing.PackedRows or sentence_pairs.PairRows: dataclasses of arrays)."""
  digest = hashlib.blake2b(digest_size=16)
  for split, rows in (('train', train_rows), ('eval', eval_rows)):
    for field in dataclasses.fields(rows):
      value = getattr(rows, field.name)
      if isinstance(value, np.ndarray):
        digest.update(f'{split}.{field.name} {value.dtype.str} {value.shape}\0'.encode())
        digest.update(np.ascontiguousarray(value).data)
  return _make(counts, digest)


def of_prepared(manifest: dict[str, Any], shard_paths: Sequence[str], tokenizer_bytes: bytes) -> dict[str, Any]:
  """Of a prepared directory: its manifest, shard file sizes and tokenizer (never the rows: no process has all)."""
  digest = hashlib.blake2b(json.dumps(manifest, sort_keys=True).encode(), digest_size=16)
  for path in shard_paths:
    digest.update(f'\0{os.path.basename(path)} {os.path.getsize(path)}'.encode())
  digest.update(b'\0')
  digest.update(tokenizer_bytes)
  return _make(manifest['counts'], digest)


def _make(counts: dict[str, int], digest) -> dict[str, Any]:
  return {**{k: counts.get(k) for k in COUNTS}, 'hash': digest.hexdigest()}


def describe(fingerprint: dict[str, Any]) -> str:
  """'12 documents / 340 train + 7 eval rows (hash ab12cd34ef56)'."""
  get = fingerprint.get
  return (f"{get('documents')} documents / {get('train_rows')} train + {get('eval_rows')} eval rows "
          f"(hash {str(get('hash'))[:_SHOWN]})")


def differences(then: dict[str, Any], now: dict[str, Any]) -> str:
  """'documents 12 -> 13, train_rows 340 -> 352, hash ab12cd34ef56 -> 9f3e01a2b3c4'."""
  keys = [*COUNTS, 'hash', *sorted((then.keys() | now.keys()) - {*COUNTS, 'hash'})]
  short = lambda value: value[:_SHOWN] if isinstance(value, str) else value
  return ', '.join(f'{k} {short(then.get(k))} -> {short(now.get(k))}' for k in keys if then.get(k) != now.get(k))


def check_processes_agree(source: str, fingerprints: Sequence[dict[str, Any]]) -> None:
  """Raises one ConfigError naming the processes (grouped by what they read) unless all fingerprints are equal."""
  groups: dict[str, list[int]] = {}
  for process, fingerprint in enumerate(fingerprints):
    groups.setdefault(json.dumps(fingerprint, sort_keys=True), []).append(process)
  if len(groups) > 1:
    read = ', '.join(f'{_processes(ids)} read {describe(json.loads(key))}' for key, ids in groups.items())
    raise ConfigError(f"data.source: processes disagree on what '{source}' holds: {read}; every process must see "
                      'the same files')


def check_resume(source: str, saved: dict[str, Any], now: dict[str, Any], step: int, allow_change: bool) -> None:
  """A ConfigError unless this run read what the checkpoint's did (`saved`); with allow_change, a warning."""
  if saved == now:
    return
  what = (f"data.source: '{source}' is not what the checkpoint at step {step} trained on "
          f'({differences(saved, now)})')
  if not allow_change:
    raise ConfigError(f'{what}: its files (or data.seq_len, eval_fraction, max_doc_chars) changed since; restore '
                      'them to resume exactly, or set data.allow_source_change=true to go on with the new rows')
  log.warning('%s; data.allow_source_change=true: going on from step %d with the new rows', what, step)


def _processes(ids: list[int]) -> str:
  """'process 1', 'processes 0, 2-5'."""
  runs, start = [], ids[0]
  for prev, cur in zip(ids, ids[1:] + [None]):
    if cur != prev + 1:
      runs.append(str(start) if start == prev else f'{start}-{prev}')
      start = cur
  return f"process{'es' if len(ids) > 1 else ''} {', '.join(runs)}"
