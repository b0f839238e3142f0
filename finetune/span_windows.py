"""SQuAD examples -> windows of `[CLS] question [SEP] context chunk [SEP]`, and span logits -> answer texts.

Token types: 0 for [CLS] question [SEP], 1 for the context chunk and its [SEP]. The question keeps its first
max_query_length pieces; the context is tokenized once with character offsets and cut into chunks that fill
the window, consecutive chunks sharing doc_stride pieces (Hugging Face run_qa's `stride`). Labels: the token
positions of the example's first located answer (squad.QaExample start >= 0) in a window that holds all of it,
else 0 (the [CLS] position), also for impossible questions.

decode() scores a span by start_logit + end_logit; the null score of an example is the least [CLS] score
(start + end at position 0) over its windows, and its null difference is that minus the best span's score
(HF run_qa's / the BERT v2.0 recipe's sign): predict '' where the difference exceeds a threshold.
"""
import dataclasses
from collections.abc import Sequence

import numpy as np

from finetune.squad import QaExample
from pretrain.data.hf_tokenizer import HfTokenizer
from pretrain.data.tokenizer import Tokenizer
from pretrain.runtime.errors import require


@dataclasses.dataclass
class SpanWindows:
  tokens: list[list[int]]  # per window, unpadded
  token_type_ids: list[list[int]]
  offsets: list[np.ndarray]  # per window int32 [len(tokens), 2]: context tokens' [start, end) characters, else -1
  context_start: np.ndarray  # int32 [windows]: position of the first context token
  example_index: np.ndarray  # int32 [windows]: index into the examples given to build()
  start_positions: np.ndarray  # int32 [windows]: label token positions, 0 ([CLS]) when no answer is inside
  end_positions: np.ndarray
  pad_id: int = 0

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def longest(self) -> int:
    return max((len(t) for t in self.tokens), default=0)

  def context_end(self, w: int) -> int:
    """Position after window w's last context token (its final [SEP])."""
    return len(self.tokens[w]) - 1

  def arrays(self, length: int) -> dict[str, np.ndarray]:
    """tokens, token_type_ids, segment_ids (1 real, 0 padding): int32 [windows, length]; start_positions,
    end_positions: int32 [windows]."""
    require(length >= self.longest, f'SQuAD windows: length {length} is shorter than the longest {self.longest}')
    n = len(self.tokens)
    tokens = np.full((n, length), self.pad_id, np.int32)
    types = np.zeros((n, length), np.int32)
    segments = np.zeros((n, length), np.int32)
    for i, (ids, type_ids) in enumerate(zip(self.tokens, self.token_type_ids)):
      tokens[i, :len(ids)], types[i, :len(ids)], segments[i, :len(ids)] = ids, type_ids, 1
    return {'tokens': tokens, 'token_type_ids': types, 'segment_ids': segments,
            'start_positions': self.start_positions.astype(np.int32),
            'end_positions': self.end_positions.astype(np.int32)}


def _answer_tokens(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int] | None:
  """(first, last) token of the characters [start, end): the first token ending after `start` and the last one
  starting before `end` (so all byte pieces of a character at either end); None when no token is inside."""
  first = next((i for i in range(len(offsets)) if offsets[i][1] > start), None)
  last = next((i for i in range(len(offsets) - 1, -1, -1) if offsets[i][0] < end), None)
  if first is None or last is None or last < first:
    return None
  return first, last


def build(examples: Sequence[QaExample], tokenizer: Tokenizer | HfTokenizer, max_length: int = 384,
          doc_stride: int = 128, max_query_length: int = 64) -> SpanWindows:
  """Windows of every example (at least one each, in order); see the module docstring."""
  require(max_query_length > 0, f'data.max_query_length: must be positive, got {max_query_length}')
  room = max_length - max_query_length - 3
  require(0 <= doc_stride < room, f'data.doc_stride: {doc_stride} must be at least 0 and below the context room '
          f'{room} of data.max_length {max_length} - data.max_query_length {max_query_length} - 3 specials')
  questions = tokenizer.encode_batch([e.question.strip() for e in examples])
  contexts: dict[str, tuple[list[int], list[tuple[int, int]], np.ndarray]] = {}  # shared paragraphs: encode once
  tokens, types, offsets, context_start, example_index, starts, ends = [], [], [], [], [], [], []
  for index, (example, question) in enumerate(zip(examples, questions)):
    if example.context not in contexts:
      ids, spans = tokenizer.encode_with_offsets(example.context)
      contexts[example.context] = ids, spans, np.asarray(spans, np.int32).reshape(-1, 2)
    ids, spans, span_array = contexts[example.context]
    question = question[:max_query_length]
    chunk = max_length - len(question) - 3
    answer = next(((text, s) for text, s in example.answers if s >= 0), None)
    located = None
    if answer is not None and not example.is_impossible:
      located = _answer_tokens(spans, answer[1], answer[1] + len(answer[0]))
    head = [tokenizer.cls_id, *question, tokenizer.sep_id]
    begin = 0
    while True:
      end = min(begin + chunk, len(ids))
      tokens.append([*head, *ids[begin:end], tokenizer.sep_id])
      types.append([0] * len(head) + [1] * (end - begin + 1))
      window_offsets = np.full((len(tokens[-1]), 2), -1, np.int32)
      window_offsets[len(head):len(head) + end - begin] = span_array[begin:end]
      offsets.append(window_offsets)
      context_start.append(len(head))
      example_index.append(index)
      if located is not None and begin <= located[0] and located[1] < end:
        starts.append(len(head) + located[0] - begin)
        ends.append(len(head) + located[1] - begin)
      else:
        starts.append(0)
        ends.append(0)
      if end >= len(ids):
        break
      begin += chunk - doc_stride
  as_array = lambda values: np.asarray(values, np.int32)
  return SpanWindows(tokens, types, offsets, as_array(context_start), as_array(example_index), as_array(starts),
                     as_array(ends), pad_id=tokenizer.pad_id)


def decode(windows: SpanWindows, examples: Sequence[QaExample], start_logits: np.ndarray, end_logits: np.ndarray,
           n_best: int = 20, max_answer_length: int = 30) -> tuple[dict[str, str], dict[str, float]]:
  """Per example id: the best span's text (context[char start:char end] of the original context; '' when no
  window has a valid span) and the null difference (min [CLS] score - best span score; +inf without a span).

  start_logits, end_logits: [windows, length >= each window's length]. A valid span: start <= end, both in the
  window's context, at most max_answer_length tokens, among the window's n_best top starts x n_best top ends.
  """
  start_logits, end_logits = np.asarray(start_logits, np.float64), np.asarray(end_logits, np.float64)
  require(start_logits.shape[0] == len(windows) and end_logits.shape[0] == len(windows),
          f'SQuAD decode: logits for {start_logits.shape[0]}/{end_logits.shape[0]} windows, expected {len(windows)}')
  best: dict[int, tuple[float, int, int, int]] = {}  # example index -> (score, window, start, end position)
  null: dict[int, float] = {}
  for w in range(len(windows)):
    e = int(windows.example_index[w])
    null[e] = min(null.get(e, np.inf), start_logits[w, 0] + end_logits[w, 0])
    c0, c1 = int(windows.context_start[w]), windows.context_end(w)
    if c1 <= c0:
      continue
    s, t = start_logits[w, c0:c1], end_logits[w, c0:c1]
    top_s = np.argsort(-s, kind='stable')[:n_best]
    top_e = np.argsort(-t, kind='stable')[:n_best]
    scores = s[top_s][:, None] + t[top_e][None, :]
    length = top_e[None, :] - top_s[:, None] + 1
    scores = np.where((length >= 1) & (length <= max_answer_length), scores, -np.inf)
    i, j = np.unravel_index(np.argmax(scores), scores.shape)
    if np.isfinite(scores[i, j]) and (e not in best or scores[i, j] > best[e][0]):
      best[e] = (float(scores[i, j]), w, c0 + int(top_s[i]), c0 + int(top_e[j]))
  predictions, differences = {}, {}
  for e, example in enumerate(examples):
    require(e in null, f'SQuAD decode: example {example.id} has no window (windows built from other examples?)')
    if e in best:
      score, w, start, end = best[e]
      predictions[example.id] = example.context[int(windows.offsets[w][start, 0]):int(windows.offsets[w][end, 1])]
      differences[example.id] = float(null[e] - score)
    else:
      predictions[example.id], differences[example.id] = '', float('inf')
  return predictions, differences


def with_null_threshold(predictions: dict[str, str], differences: dict[str, float],
                        threshold: float = 0.0) -> dict[str, str]:
  """predictions with '' where the null difference exceeds threshold (SQuAD v2.0)."""
  return {qid: '' if differences[qid] > threshold else text for qid, text in predictions.items()}
