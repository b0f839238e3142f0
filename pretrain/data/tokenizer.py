"""SentencePiece tokenizer: load, save, serialise into checkpoints, and train with lossless settings.

Special ids of a model trained here: pad 0, unk 1, cls = BOS `<s>` 2, sep = EOS `</s>` 3, `[MASK]` 4.
All five are control/meta pieces, so `encode` of any text never produces them (the text "[MASK]" or
"<s>" is spelled with ordinary pieces). With byte fallback, unknown characters become byte pieces, so
`decode(encode(text)) == text` for any text, newlines and tabs included (they are byte pieces `<0x0A>`,
`<0x09>` unless the trainer learned them as ordinary pieces).

Loading a foreign model: a missing `[MASK]` piece falls back to unk (MLM then masks with unk); a missing
pad falls back to unk; a missing BOS or EOS raises ConfigError naming the file, as packing needs both.
"""

from __future__ import annotations

import base64
import io
import os
import random
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import sentencepiece as spm

from pretrain.runtime.errors import ConfigError, first_line
from pretrain.runtime.files import write_atomic

MASK_PIECE = '[MASK]'
# Raise when the trainer settings change, so cached tokenizers keyed on it are retrained.
TRAINER_VERSION = 1
_MAX_TRAIN_SENTENCES = 2_000_000
_MAX_SENTENCE_CHARS = 4096  # the trainer silently drops sentences over max_sentence_length bytes
_BATCH_CHARS = 1 << 22  # characters per encode_batch call in text_batches: bounds its Python id lists
# The trained model depends on the trainer's thread count (not on the machine): fixed, so every host of a
# multi-host job, whatever its core count, trains the identical tokenizer.
_TRAIN_THREADS = 8
# Byte-fallback pieces of whitespace: like '▁', they open the word that follows (see Tokenizer.word_starts).
WHITESPACE_BYTE_PIECES = frozenset(f'<0x{b:02X}>' for b in b' \t\n\r\x0b\x0c')


class Tokenizer:
  """A SentencePiece model with the special ids the pretraining objectives need."""
  file_name = 'tokenizer.model'

  def __init__(self, model_proto: bytes, *, name: str = 'tokenizer'):
    """`name` (a file path, or 'tokenizer') is what errors about this model point at."""
    self._proto = bytes(model_proto)
    self._name = name
    self._sp = spm.SentencePieceProcessor()
    try:
      self._sp.LoadFromSerializedProto(self._proto)
    except (RuntimeError, OSError) as e:
      raise ConfigError(f'{name}: not a SentencePiece model ({first_line(e)})') from None
    if self._sp.bos_id() < 0 or self._sp.eos_id() < 0:
      raise ConfigError(f'{name}: SentencePiece model has no BOS <s> / EOS </s> piece (needed as cls/sep)')
    self.vocab_size: int = self._sp.get_piece_size()
    self.unk_id: int = self._sp.unk_id()
    self.pad_id: int = self._sp.pad_id() if self._sp.pad_id() >= 0 else self.unk_id
    self.cls_id: int = self._sp.bos_id()
    self.sep_id: int = self._sp.eos_id()
    self.mask_id: int = self._sp.piece_to_id(MASK_PIECE)  # unk_id when the model has no [MASK]
    ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
    self.special_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))

  @classmethod
  def from_file(cls, path: str | os.PathLike) -> Tokenizer:
    try:
      with open(path, 'rb') as f:
        data = f.read()
    except OSError as e:
      raise ConfigError(f'{path}: cannot read tokenizer model ({e.strerror})') from None
    return cls(data, name=str(path))

  @classmethod
  def from_bytes(cls, data: bytes) -> Tokenizer:
    return cls(data)

  def to_bytes(self) -> bytes:
    """The serialised model proto (what `from_bytes` reads back; travels inside checkpoints)."""
    return self._proto

  def to_meta(self) -> dict:
    """What a checkpoint's meta item holds (see pretrain.data.tokenizers.tokenizer_from_meta)."""
    return {'kind': 'sentencepiece', 'model_b64': base64.b64encode(self._proto).decode()}

  def save(self, path: str | os.PathLike) -> None:
    """Writes the .model file atomically (a temporary file renamed into place)."""
    write_atomic(path, self._proto)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`; no BOS/EOS added."""
    return self._sp.encode(text)

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """`encode(text)` and, per id, the [start, end) character offsets (str indices) of the text it covers.

    SentencePiece reports UTF-8 byte spans: every byte-fallback piece of one multi-byte character maps to that
    whole character (the pieces before its last one have an empty byte span). A piece that starts with
    whitespace ('▁word') does not cover it: its span starts at the word (see trim_leading_space);
    whitespace-only pieces keep their span. Foreign models with a normaliser: spans point into `text` as given.
    """
    pieces = _proto(self._sp, text).pieces
    cps = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    char_bytes = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    char_at = np.append(np.repeat(np.arange(len(text)), char_bytes), len(text)).tolist()  # byte -> character
    offsets = []
    for p in pieces:
      start = char_at[p.begin]
      end = char_at[p.end - 1] + 1 if p.end > p.begin else min(start + 1, len(text))
      offsets.append((start, end))
    return [p.id for p in pieces], trim_leading_space(text, offsets)

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    """`encode` of many texts at once, in native threads (-1: all cores)."""
    return self._sp.encode(list(texts), num_threads=num_threads)

  def decode(self, ids: Iterable[int]) -> str:
    """Text of `ids`; special ids decode to nothing."""
    return self._sp.decode([int(i) for i in ids])

  def id_to_piece(self, i: int) -> str:
    return self._sp.id_to_piece(int(i))

  def piece_to_id(self, piece: str) -> int:
    return self._sp.piece_to_id(piece)

  def word_starts(self) -> np.ndarray:
    """bool [vocab_size]: piece i begins a word (whole-word masking groups a word's pieces).

    Begins a word: a piece starting with '▁' (a space; whitespace-only pieces included) or another whitespace
    character, a whitespace byte piece (<0x0A> newline, <0x09> tab, ...: it opens the next word as '▁' does),
    and special pieces. Every other
    byte-fallback piece (<0xE2>: a UTF-8 byte of a character outside the vocabulary) continues the word before
    it. Models trained here add no dummy prefix, so a text's first word has no '▁': objectives.mlm also starts a
    word after every special token.
    """
    sp = self._sp

    def begins(i: int) -> bool:
      piece = sp.id_to_piece(i)
      return (piece.startswith('▁') or piece[:1].isspace() or piece in WHITESPACE_BYTE_PIECES or sp.is_control(i)
              or sp.is_unknown(i))

    starts = np.array([begins(i) for i in range(self.vocab_size)], bool)
    starts[list(self.special_ids)] = True
    return starts

  def __getstate__(self) -> dict:
    return {'proto': self._proto, 'name': self._name}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state['proto'], name=state['name'])

  def __repr__(self) -> str:
    return f'Tokenizer({self._name!r}, vocab_size={self.vocab_size})'


def _proto(sp: spm.SentencePieceProcessor, text: str):
  """The SentencePieceText of `text` (pieces with id, begin, end): 'proto' in newer sentencepiece releases,
  'immutable_proto' in 0.2.0."""
  try:
    return sp.encode(text, out_type='proto')
  except (ValueError, RuntimeError, TypeError):
    return sp.encode(text, out_type='immutable_proto')


def trim_leading_space(text: str, offsets: list[tuple[int, int]]) -> list[tuple[int, int]]:
  """offsets with each span's leading whitespace cut off, unless the span is whitespace only: '▁word' (or
  byte-level BPE's 'Ġword') then covers 'word', so answer spans that start on it do not start with a space."""
  trimmed = []
  for start, end in offsets:
    if start < end and text[start].isspace() and not text[start:end].isspace():
      start += len(text[start:end]) - len(text[start:end].lstrip())
    trimmed.append((start, end))
  return trimmed


def text_batches(texts: Sequence[str], max_texts: int, max_chars: int = _BATCH_CHARS) -> Iterator[Sequence[str]]:
  """Consecutive slices of `texts` with at most max_texts texts and max_chars characters (or one longer text).

  encode_batch returns Python lists, about 36 bytes a token: encoding a 100 MB corpus in one call takes
  gigabytes, in slices of 4M characters about 100 MB at a time.
  """
  start = chars = 0
  for i, text in enumerate(texts):
    if i > start and (i - start == max_texts or chars + len(text) > max_chars):
      yield texts[start:i]
      start, chars = i, 0
    chars += len(text)
  if start < len(texts):
    yield texts[start:]


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_path: str | os.PathLike | None = None,
                        *, vocab_field: str = 'model.vocab_size', seed: int = 0) -> Tokenizer:
  """Trains a lossless unigram SentencePiece model on `texts` (documents) and saves it to `out_path`.

  Documents are fed as lines (the trainer works on single lines); newlines are then encoded by byte
  fallback, so round trips stay exact. At most 2M lines, sampled uniformly with `seed`, are used.
  A vocabulary too large or too small for the corpus raises ConfigError naming `vocab_field`.
  """
  lines = _sample_lines(texts, _MAX_TRAIN_SENTENCES, seed)
  if not lines:
    raise ConfigError('tokenizer training: the corpus has no non-blank lines')
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size, model_type='unigram',
        normalization_rule_name='identity', remove_extra_whitespaces=False, add_dummy_prefix=False,
        byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, control_symbols=[MASK_PIECE],
        input_sentence_size=0, shuffle_input_sentence=False,
        max_sentence_length=4 * _MAX_SENTENCE_CHARS, num_threads=_TRAIN_THREADS, minloglevel=2)
  except RuntimeError as e:
    raise ConfigError(_explain_trainer_error(e, vocab_size, vocab_field)) from None
  tokenizer = Tokenizer(model.getvalue(), name=str(out_path or 'tokenizer'))
  if out_path is not None:
    tokenizer.save(out_path)
  return tokenizer


def _lines(texts: Iterable[str]) -> Iterator[str]:
  for text in texts:
    for line in text.split('\n'):
      if line.strip():
        for start in range(0, len(line), _MAX_SENTENCE_CHARS):
          yield line[start:start + _MAX_SENTENCE_CHARS]


def _sample_lines(texts: Iterable[str], k: int, seed: int) -> list[str]:
  """All lines if there are at most k, else a uniform reservoir sample of k (in random order)."""
  rng = random.Random(seed)
  sample: list[str] = []
  for n, line in enumerate(_lines(texts)):
    if n < k:
      sample.append(line)
    else:
      j = rng.randrange(n + 1)
      if j < k:
        sample[j] = line
  return sample


def _explain_trainer_error(e: RuntimeError, vocab_size: int, field: str) -> str:
  msg = first_line(e)
  if 'too high' in msg:
    limit = msg.rsplit('<=', 1)[-1].strip(' .')
    return f'{field}: {vocab_size} is too large for this corpus (at most {limit}); use a smaller vocab or more text'
  if 'smaller than required' in msg:
    return f'{field}: {vocab_size} is too small (256 byte pieces + specials + the corpus characters need more)'
  return f'{field}: SentencePiece training failed with vocab_size {vocab_size}: {msg}'
