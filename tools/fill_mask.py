"""The most likely tokens at each [MASK] of a text, from a masked-LM (bert) pretraining checkpoint.

  python -m tools.fill_mask --checkpoint runs/mlm "The [MASK] returns a list."
  python -m tools.fill_mask --checkpoint runs/mlm --top_k 10 "import [MASK] as np"

The literal text [MASK] marks the positions: the pieces between them are tokenized on their own and joined
with the mask token, wrapped as [cls] ... [sep] like a pretraining document. Probabilities are a softmax over
the tokenizer's vocabulary. Exit status 2 on bad input (no [MASK], a causal or fine-tuned checkpoint).
"""
from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pretrain.runtime.cli import ArgumentParser, tool_main
from pretrain.runtime.errors import require
from pretrain.model import load as model_load
from pretrain.model import presets

MASK_TEXT = '[MASK]'


def check_text(text: str) -> None:
  require(MASK_TEXT in text, f'text: no {MASK_TEXT} in {text!r}; mark the positions to fill with {MASK_TEXT}')


def check_masked_lm(loaded: model_load.LoadedCheckpoint) -> None:
  require(loaded.classifier is None, f'--checkpoint: {loaded.step_dir} is a fine-tuned classifier; fill_mask '
          'needs a masked-LM (bert) pretraining checkpoint')
  require(not loaded.model_cfg.causal, f'--checkpoint: {loaded.step_dir} is a causal '
          f'({presets.describe(loaded.model_cfg)}) model; fill_mask needs a masked-LM (bert) checkpoint; try '
          'tools.generate')


def token_ids(tokenizer, text: str) -> tuple[list[int], list[int]]:
  """([cls] + the pieces between the [MASK]s joined by mask_id + [sep], the positions of the masks).

  A tokenizer that reads its mask token in text (a Hugging Face tokenizer.json's added token) encodes the whole
  text instead, as transformers' fill-mask pipeline does: ModernBERT's [MASK] takes the space before it."""
  mask_piece = tokenizer.id_to_piece(tokenizer.mask_id)
  if tokenizer.encode(mask_piece) == [tokenizer.mask_id]:
    ids = [tokenizer.cls_id, *tokenizer.encode(text.replace(MASK_TEXT, mask_piece)), tokenizer.sep_id]
    positions = [i for i, t in enumerate(ids) if t == tokenizer.mask_id]
    if len(positions) == text.count(MASK_TEXT):
      return ids, positions
  ids, positions = [tokenizer.cls_id], []
  for i, part in enumerate(text.split(MASK_TEXT)):
    if i:
      positions.append(len(ids))
      ids.append(tokenizer.mask_id)
    ids += tokenizer.encode(part)
  return ids + [tokenizer.sep_id], positions


@functools.partial(jax.jit, static_argnames=('graphdef', 'known', 'k'))
def _top_k(graphdef, known, k, params, tokens_bt, positions_bk):
  """Probabilities (softmax over the first `known` ids) and ids of the k most likely tokens at positions."""
  logits_bkv = nnx.merge(graphdef, params)(tokens_bt, predict_positions=positions_bk)
  logits_bkv = jnp.where(jnp.arange(logits_bkv.shape[-1]) < known, logits_bkv, -jnp.inf)
  return jax.lax.top_k(jax.nn.softmax(logits_bkv, axis=-1), k)


def fill_mask(loaded: model_load.LoadedCheckpoint, text: str, top_k: int = 5
              ) -> list[list[tuple[int, str, float]]]:
  """For each [MASK] of text, in order: its top_k (id, piece, probability), most likely first."""
  require(top_k >= 1, f'--top_k: must be at least 1, got {top_k}')
  check_text(text)
  check_masked_lm(loaded)
  tok = loaded.tokenizer
  ids, positions = token_ids(tok, text)
  limit = loaded.model_cfg.max_position_embeddings
  require(len(ids) <= limit, f'text: {len(ids)} tokens with [CLS] and [SEP], more than the model\'s '
          f'max_position_embeddings {limit}')
  graphdef, _ = nnx.split(loaded.build())
  known = min(tok.vocab_size, loaded.model_cfg.vocab_size)
  probs_bkk, ids_bkk = _top_k(graphdef, known, min(top_k, known), loaded.params,
                              jnp.asarray([ids], jnp.int32), jnp.asarray([positions], jnp.int32))
  probs_kk, ids_kk = np.asarray(probs_bkk[0]), np.asarray(ids_bkk[0])
  return [[(int(i), tok.id_to_piece(int(i)), float(p)) for i, p in zip(ids_k, probs_k)]
          for ids_k, probs_k in zip(ids_kk, probs_kk)]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.fill_mask', description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True, help='a bert workdir, its checkpoints/ dir or a step dir')
  parser.add_argument('--top_k', type=int, default=5, help='tokens shown per [MASK]')
  parser.add_argument('text', help='text with one or more [MASK]')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> list[list[tuple[int, str, float]]]:
  require(args.top_k >= 1, f'--top_k: must be at least 1, got {args.top_k}')
  check_text(args.text)
  loaded = model_load.load_checkpoint(args.checkpoint)
  check_masked_lm(loaded)
  results = fill_mask(loaded, args.text, args.top_k)
  for n, rows in enumerate(results, 1):
    print(f'[MASK] {n}:')
    for rank, (i, piece, p) in enumerate(rows, 1):
      print(f'  {rank:>2}  {p:.4f}  {piece!r}  (id {i}, text {loaded.tokenizer.decode([i])!r})')
  return results


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
