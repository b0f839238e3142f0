"""A Hugging Face `tokenizers` tokenizer (WordPiece for imported BERT, byte-level BPE for imported GPT-2)
behind the interface of pretrain.data.tokenizer.Tokenizer: encode without specials, special ids, decode.

Needs the `hf` extra (`tokenizers`); everything else in the project runs without it. The whole tokenizer
(its tokenizer.json) and the names of its special tokens travel inside checkpoints (see `to_meta`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

import numpy as np

from pretrain.runtime.errors import ConfigError, first_line, require
from pretrain.runtime.files import write_atomic
from pretrain.data.tokenizer import WHITESPACE_BYTE_PIECES, trim_leading_space

KIND = 'hf_tokenizers'
SPECIAL_ROLES = ('pad', 'unk', 'cls', 'sep', 'mask')
# First characters of tokens that follow whitespace: byte-level BPE's space, newline, tab and CR; Metaspace's '▁'.
_WHITESPACE_MARKS = ('Ġ', 'Ċ', 'ĉ', 'č', '▁')


def import_tokenizers():
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError('tokenizer: this checkpoint uses a Hugging Face tokenizer; install the `hf` extra '
                      "(pip install torch==2.13.0 && pip install -e '.[hf]')") from None
  return tokenizers


class HfTokenizer:
  """tokenizer_json: a `tokenizers` JSON string. special: role ('pad', 'unk', 'cls', 'sep', 'mask') -> token.

  GPT-2 has one special token for everything; a missing role falls back to unk (pad, mask) or to the
  other of cls/sep, as for SentencePiece models.
  """
  file_name = 'tokenizer.json'

  def __init__(self, tokenizer_json: str, special: dict[str, str | None], *, name: str = 'tokenizer'):
    self._json = tokenizer_json
    self._name = name
    try:
      self._tok = import_tokenizers().Tokenizer.from_str(tokenizer_json)
    except Exception as e:  # pylint: disable=broad-except  # tokenizers raises a bare Exception
      raise ConfigError(f'{name}: not a Hugging Face tokenizer.json ({first_line(e)})') from None
    self._tok.no_padding()
    self._tok.no_truncation()
    self.special = {role: special.get(role) for role in SPECIAL_ROLES}
    ids = {role: self._id(token) for role, token in self.special.items()}
    require(ids['cls'] is not None or ids['sep'] is not None,
            f'{name}: no cls/sep (or bos/eos) token among {sorted(t for t in self.special.values() if t)}')
    self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)
    self.unk_id: int = ids['unk'] if ids['unk'] is not None else (ids['sep'] if ids['sep'] is not None else ids['cls'])
    self.cls_id: int = ids['cls'] if ids['cls'] is not None else ids['sep']
    self.sep_id: int = ids['sep'] if ids['sep'] is not None else ids['cls']
    self.pad_id: int = ids['pad'] if ids['pad'] is not None else self.unk_id
    self.mask_id: int = ids['mask'] if ids['mask'] is not None else self.unk_id
    ids = (self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id)
    self.special_ids: tuple[int, ...] = tuple(dict.fromkeys(ids))

  def _id(self, token: str | None) -> int | None:
    return None if token is None else self._tok.token_to_id(token)

  @classmethod
  def from_meta(cls, meta: dict) -> HfTokenizer:
    return cls(meta['tokenizer_json'], meta['special_tokens'], name='checkpoint tokenizer')

  def to_meta(self) -> dict:
    return {'kind': KIND, 'tokenizer_json': self._json, 'special_tokens': self.special}

  def to_json(self) -> str:
    return self._json

  def save(self, path: str | os.PathLike) -> None:
    write_atomic(path, self._json)

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """`encode(text)` and, per id, the [start, end) character offsets (str indices) into `text` as given (before
    any normaliser: WordPiece's 'zurich' of 'Zürich' covers 'Zürich'); leading whitespace cut off as in
    Tokenizer.encode_with_offsets."""
    encoding = self._tok.encode(text, add_special_tokens=False)
    return encoding.ids, trim_leading_space(text, [tuple(o) for o in encoding.offsets])

  def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
    del num_threads  # tokenizers parallelises by itself
    return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

  def id_to_piece(self, i: int) -> str:
    return self._tok.id_to_token(int(i))

  def piece_to_id(self, piece: str) -> int:
    i = self._tok.token_to_id(piece)
    return self.unk_id if i is None else i

  def word_starts(self) -> np.ndarray:
    """bool [vocab_size]: token i begins a word. WordPiece: every token but '##' continuations; byte-level
    BPE (and unigram): tokens starting with 'Ġ' (a space) or another whitespace mark (_WHITESPACE_MARKS) or
    character, and whitespace byte-fallback tokens (as Tokenizer.word_starts); special tokens always."""
    model = json.loads(self._json).get('model', {})
    if model.get('type') == 'WordPiece':
      prefix = model.get('continuing_subword_prefix') or '##'
      begins = lambda token: not token.startswith(prefix)
    else:
      begins = lambda token: (token.startswith(_WHITESPACE_MARKS) or token[:1].isspace()
                              or token in WHITESPACE_BYTE_PIECES)
    starts = np.zeros(self.vocab_size, bool)
    for token, i in self._tok.get_vocab(with_added_tokens=True).items():
      starts[i] = begins(token)
    special = [i for i, added in self._tok.get_added_tokens_decoder().items() if added.special]
    starts[special + list(self.special_ids)] = True
    return starts

  def __getstate__(self) -> dict:
    return {'json': self._json, 'special': self.special, 'name': self._name}

  def __setstate__(self, state: dict) -> None:
    self.__init__(state['json'], state['special'], name=state['name'])

  def __repr__(self) -> str:
    return f'HfTokenizer({self._name!r}, vocab_size={self.vocab_size})'

