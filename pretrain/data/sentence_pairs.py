"""BERT sentence pairs for next-sentence (nsp) or sentence-order (sop) prediction (mlm.sentence_task).

Each row is `[CLS] A [SEP] B [SEP]` + padding, one pair per row (no packing), built once per split as BERT's
create_pretraining_data does, deterministically from the seed:
- documents are split into sentences (`split_sentences`) and tokenized sentence by sentence;
- sentences accumulate into a chunk until it holds seq_len - 3 tokens (or the document ends); the chunk is cut at
  a random sentence boundary into A and B (a chunk of one long sentence at a random token);
- nsp: with probability 1/2, B is replaced by a span of a random other document of the split, from a random
  sentence on (label 1 = random, 0 = B follows A, as transformers' next_sentence_label); the chunk's sentences
  after A then start the next chunk. sop: with probability 1/2, A and B are swapped (label 1 = swapped);
- truncation is longest-first: the longer of A and B loses tokens (each from its front or back at random).
Token types: 0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding; segment_ids 1 for real tokens, 0 for padding.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Sequence

import numpy as np

from pretrain.data.packing import ArrayRows
from pretrain.data.tokenizer import text_batches
from pretrain.runtime.errors import require

TASKS = ('none', 'nsp', 'sop')
_ENCODE_CHUNK = 4096  # sentences encoded per call (at most; see text_batches)
# A sentence ends at a newline, or after '.', '!' or '?' (and closing quotes or brackets) that whitespace and a
# capital letter, digit or opening quote/bracket follow: "e.g. the" and "3.14" stay whole.
_SENTENCE_END = re.compile(r'\n|[.!?]["\')\]]*(?=[ \t]+["\'(\[]?[A-Z0-9])')
_SPLIT_SEEDS = {'train': 0, 'eval': 1}


def split_sentences(text: str) -> list[str]:
  """Sentences that tile `text` (their concatenation is the text): a newline ends the sentence before it, and
  the whitespace before a sentence belongs to it; whitespace-only pieces join their neighbour."""
  cuts = [0, *(m.end() for m in _SENTENCE_END.finditer(text)), len(text)]
  sentences, pending = [], ''
  for start, end in zip(cuts, cuts[1:]):
    piece = text[start:end]
    if piece.strip():
      sentences.append(pending + piece)
      pending = ''
    elif sentences:
      sentences[-1] += piece
    else:
      pending += piece
  return sentences


@dataclasses.dataclass
class PairRows(ArrayRows):
  """Sentence-pair rows; `batch(ids)` gives their features (ids past the end: all-padding rows)."""
  tokens: np.ndarray  # [rows, seq_len] int32: [CLS] A [SEP] B [SEP], then pad_id
  token_types: np.ndarray  # [rows, seq_len] int8: 0 up to the first [SEP], 1 after it, 0 for padding
  lengths: np.ndarray  # [rows] int32: real tokens per row
  labels: np.ndarray  # [rows] int8: nsp 1 = B is random; sop 1 = A and B swapped
  pad_id: int

  @property
  def num_tokens(self) -> int:
    return int(self.lengths.sum())

  def batch(self, ids: np.ndarray) -> dict[str, np.ndarray]:
    """tokens, segment_ids, positions, token_types [len(ids), seq_len] and sentence_labels [len(ids), 1]."""
    real_b = ids < len(self)
    rows_b = np.where(real_b, ids, 0)
    lengths_b = np.where(real_b, self.lengths[rows_b], 0)
    real_bt = np.arange(self.seq_len) < lengths_b[:, None]
    return {'tokens': np.where(real_bt, self.tokens[rows_b], self.pad_id).astype(np.int32),
            'segment_ids': real_bt.astype(np.int32),
            'positions': (np.arange(self.seq_len) * real_bt).astype(np.int32),
            'token_types': np.where(real_bt, self.token_types[rows_b], 0).astype(np.int32),
            'sentence_labels': np.where(real_b, self.labels[rows_b], 0).astype(np.int32)[:, None]}


def pair_rows(docs: Sequence[str], tokenizer, seq_len: int, task: str, seed: int, split: str) -> PairRows:
  """The sentence pairs of one split's documents; the same for the same documents, task, seed and split."""
  require(task in TASKS[1:], f'mlm.sentence_task: {task!r} is not one of {TASKS}')
  require(seq_len >= 5, f'data.seq_len: sentence pairs [CLS] A [SEP] B [SEP] need at least 5, got {seq_len}')
  documents = [d for d in encode_sentences(docs, tokenizer) if sum(len(s) for s in d) >= 2]
  require(task != 'nsp' or len(documents) >= 2 or not documents,
          f'mlm.sentence_task: nsp draws B from another document, but the {split} split has only one; '
          'add documents or change data.eval_fraction')
  rng = np.random.default_rng([seed % 2**32, _SPLIT_SEEDS[split]])
  pairs = [pair for i in range(len(documents)) for pair in _document_pairs(documents, i, seq_len - 3, task, rng)]
  tokens = np.full((len(pairs), seq_len), tokenizer.pad_id, np.int32)
  token_types = np.zeros((len(pairs), seq_len), np.int8)
  lengths = np.zeros(len(pairs), np.int32)
  cls, sep = np.array([tokenizer.cls_id], np.int32), np.array([tokenizer.sep_id], np.int32)
  for row, (a, b, _) in enumerate(pairs):
    lengths[row] = len(a) + len(b) + 3
    tokens[row, :lengths[row]] = np.concatenate([cls, a, sep, b, sep])
    token_types[row, len(a) + 2:lengths[row]] = 1
  labels = np.array([label for _, _, label in pairs], np.int8)
  return PairRows(tokens, token_types, lengths, labels, tokenizer.pad_id)


def encode_sentences(docs: Sequence[str], tokenizer) -> list[list[np.ndarray]]:
  """Each document as a list of its sentences' token ids (int32)."""
  sentences = [split_sentences(doc) for doc in docs]
  flat = [s for doc in sentences for s in doc]
  ids = [np.asarray(x, np.int32) for batch in text_batches(flat, _ENCODE_CHUNK)
         for x in tokenizer.encode_batch(batch)]
  bounds = np.cumsum([0, *map(len, sentences)])
  return [[x for x in ids[start:end] if len(x)] for start, end in zip(bounds, bounds[1:])]


def _document_pairs(documents: list[list[np.ndarray]], index: int, max_tokens: int, task: str,
                    rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
  """(A, B, label) of one document, as create_instances_from_document in BERT (without short sequences)."""
  sentences = documents[index]
  chunk: list[np.ndarray] = []
  i = 0
  while i < len(sentences):
    chunk.append(sentences[i])
    chunk_tokens = sum(len(s) for s in chunk)
    if (i == len(sentences) - 1 or chunk_tokens >= max_tokens) and chunk_tokens >= 2:
      if len(chunk) >= 2:
        a_end = int(rng.integers(1, len(chunk)))
        a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
      else:  # one sentence: cut it at a random token
        a_end, cut = 1, int(rng.integers(1, len(chunk[0])))
        a, b = chunk[0][:cut], chunk[0][cut:]
      label = 0
      if task == 'nsp' and rng.random() < 0.5:
        label, b = 1, _random_span(documents, index, max_tokens - len(a), rng)
        i -= len(chunk) - a_end  # the sentences after A start the next chunk
      elif task == 'sop' and rng.random() < 0.5:
        label, a, b = 1, b, a
      yield *_truncate_pair(a, b, max_tokens, rng), label
      chunk = []
    i += 1


def _random_span(documents: list[list[np.ndarray]], index: int, min_tokens: int,
                 rng: np.random.Generator) -> np.ndarray:
  """Sentences of a random other document, from a random one on, until they hold min_tokens (at least one)."""
  other = int(rng.integers(len(documents) - 1))
  sentences = documents[other + (other >= index)]
  span, total = [], 0
  for sentence in sentences[int(rng.integers(len(sentences))):]:
    span.append(sentence)
    total += len(sentence)
    if total >= min_tokens:
      break
  return np.concatenate(span)


def _truncate_pair(a: np.ndarray, b: np.ndarray, max_tokens: int,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Longest first: the longer side loses a token until the pair fits (ties: B), each token from its front or
  back at random, as BERT's truncate_seq_pair (in closed form)."""
  keep_a, keep_b = _truncated_lengths(len(a), len(b), max_tokens)
  return _trim(a, keep_a, rng), _trim(b, keep_b, rng)


def _truncated_lengths(len_a: int, len_b: int, max_tokens: int) -> tuple[int, int]:
  half_a, half_b = (max_tokens + 1) // 2, max_tokens // 2
  if len_a + len_b <= max_tokens:
    return len_a, len_b
  if len_a <= half_a:
    return len_a, max_tokens - len_a
  if len_b <= half_b:
    return max_tokens - len_b, len_b
  return half_a, half_b


def _trim(x: np.ndarray, keep: int, rng: np.random.Generator) -> np.ndarray:
  removed = len(x) - keep
  front = int(rng.binomial(removed, 0.5)) if removed else 0
  return x[front:front + keep]
