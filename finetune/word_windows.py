"""Sentences of words -> fixed-shape windows `[CLS] pieces [SEP]` for token classification, and predictions back
to words.

A word's label sits on its first piece; every other position (later pieces, [CLS], [SEP], padding) has -1. Each
word is tokenized alone, the words after a sentence's first with the space before them (' ' + word: how they
appear in the sentence's text, which matters to SentencePiece and byte-level BPE; WordPiece ignores it). A word
with no pieces (WordPiece drops control and zero-width characters) is the unk token, so every word is predicted.

A sentence longer than max_length - 2 pieces is split into windows that end at word boundaries; each window
after the first starts at the last word that begins at least `stride` pieces before the previous window's end
(the overlap is about `stride` pieces, as Hugging Face's doc_stride; stride 0: no overlap). A word longer than
a window is cut: its first pieces (the labelled one included) fill a window of their own. A word in several
windows is predicted by the one where it has the most context (BERT's SQuAD max-context rule).
"""
import bisect
import dataclasses
import itertools

import numpy as np

from pretrain.runtime.errors import require

IGNORED = -1  # label of positions that are not a word's first piece


@dataclasses.dataclass
class WordWindows:
  tokens: list[list[int]]  # per window: [CLS] pieces [SEP]
  labels: list[list[int]]  # per window and position: the label of the word whose first piece is there, else -1
  word_index: list[list[int]]  # per window and position: the sentence's word whose first piece is there, else -1
  sentence: np.ndarray  # int32 [windows]: the sentence each window comes from
  longest: int  # tokens in the longest window
  pad_id: int

  def __len__(self) -> int:
    return len(self.tokens)

  def arrays(self, length: int) -> dict[str, np.ndarray]:
    """tokens, token_type_ids (zeros), segment_ids (1 = real token, 0 = padding), labels (-1 = ignored): int32
    [windows, length]."""
    require(length >= self.longest, f'padded length {length} is shorter than the longest window ({self.longest})')
    shape = (len(self.tokens), length)
    tokens, labels = np.full(shape, self.pad_id, np.int32), np.full(shape, IGNORED, np.int32)
    segments = np.zeros(shape, np.int32)
    for i, (ids, row_labels) in enumerate(zip(self.tokens, self.labels)):
      tokens[i, :len(ids)], labels[i, :len(ids)], segments[i, :len(ids)] = ids, row_labels, 1
    return {'tokens': tokens, 'token_type_ids': np.zeros(shape, np.int32), 'segment_ids': segments,
            'labels': labels}


def _spans(starts: list[int], n: int, budget: int, stride: int) -> list[tuple[int, int]]:
  """[a, b) piece ranges of the windows of a sentence of n pieces whose words begin at `starts` (starts[0] = 0)."""

  def end(a: int) -> int:
    if a + budget >= n:
      return n
    last = starts[bisect.bisect_right(starts, a + budget) - 1]  # the last word beginning inside the window
    return last if last > a else a + budget  # a word longer than the window is cut

  spans, a = [], 0
  while True:
    spans.append((a, end(a)))
    b = spans[-1][1]
    after = bisect.bisect_right(starts, a)  # the first word beginning after a
    if b == n or after == len(starts):  # done, or all that is left is the rest of a cut word
      return spans
    k = max(bisect.bisect_right(starts, b - stride) - 1, after)
    while end(starts[k]) <= b:  # a window that adds nothing (the word at b does not fit): start later
      k += 1
    a = starts[k]


def build(words: list[list[str]], labels: list[list[int]] | None, tokenizer, max_length: int,
          stride: int) -> WordWindows:
  """The windows of sentences `words` (labels: class ids per word, or None), at most max_length tokens each."""
  budget = max_length - 2
  require(budget >= 1, f'max_length {max_length}: a window needs room for [CLS], a piece and [SEP]')
  require(0 <= stride < budget, f'stride {stride}: must be at least 0 and below max_length - 2 = {budget}')
  if labels is not None:
    require(len(labels) == len(words), f'{len(labels)} label lists for {len(words)} sentences')
    for s, (w, y) in enumerate(zip(words, labels)):
      require(len(w) == len(y), f'sentence {s}: {len(y)} labels for {len(w)} words')
  texts = [word if j == 0 else ' ' + word for sentence in words for j, word in enumerate(sentence)]
  encoded = iter(tokenizer.encode_batch(texts) if texts else [])
  tokens, window_labels, word_index, sentence_ids = [], [], [], []
  for s, sentence in enumerate(words):
    word_pieces = [next(encoded) or [tokenizer.unk_id] for _ in sentence]
    starts = list(itertools.accumulate((len(p) for p in word_pieces), initial=0))
    pieces = [i for p in word_pieces for i in p]
    owner = [IGNORED] * len(pieces)  # per piece: the word whose first piece it is
    for w, start in enumerate(starts[:-1]):
      owner[start] = w
    for a, b in _spans(starts[:-1], len(pieces), budget, stride):
      tokens.append([tokenizer.cls_id, *pieces[a:b], tokenizer.sep_id])
      word_index.append([IGNORED, *owner[a:b], IGNORED])
      window_labels.append([IGNORED if w < 0 or labels is None else int(labels[s][w]) for w in word_index[-1]])
      sentence_ids.append(s)
  return WordWindows(tokens, window_labels, word_index, np.asarray(sentence_ids, np.int32),
                     max((len(t) for t in tokens), default=0), tokenizer.pad_id)


def word_predictions(windows: WordWindows, logits: np.ndarray, num_words: list[int]) -> list[np.ndarray]:
  """Per sentence, int32 [words]: the class of each word's first piece in its max-context window.

  logits: [windows, length, classes]. A word's context in a window is min(pieces left of its first piece, pieces
  right of it), plus 0.01 per piece of the window (BERT's tie-break); the first window with the most wins."""
  logits = np.asarray(logits)
  require(logits.ndim == 3 and logits.shape[0] == len(windows.tokens) and logits.shape[1] >= windows.longest,
          f'logits of shape {logits.shape} for {len(windows.tokens)} windows of up to {windows.longest} tokens')
  classes = logits.argmax(-1)
  predictions = [np.zeros(n, np.int32) for n in num_words]
  best = [np.full(n, -np.inf) for n in num_words]
  for w, (s, index) in enumerate(zip(windows.sentence, windows.word_index)):
    pieces = len(index) - 2
    for position, word in enumerate(index):
      if word >= 0:
        score = min(position - 1, pieces - position) + 0.01 * pieces
        if score > best[s][word]:
          best[s][word], predictions[s][word] = score, classes[w, position]
  for s, scores in enumerate(best):
    require(bool(np.all(np.isfinite(scores))), f'sentence {s}: some of its {num_words[s]} words are in no window')
  return predictions
