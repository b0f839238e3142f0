"""The held-out split: a document is held out for evaluation when blake2b(text) / 2**64 < eval_fraction, so
duplicates of a text always land on the same side; at least one distinct text is held out when eval_fraction > 0,
and at least one is kept for training."""
import hashlib
from collections.abc import Sequence

import numpy as np


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
