"""Text continuation with a causal (gpt2, llama) checkpoint: greedy, or sampling (temperature, top-k, top-p).

  python -m tools.generate --checkpoint runs/clm --prompt "The model" --max_new_tokens 32
  python -m tools.generate --checkpoint runs/clm --prompt "The model" --temperature 0.8 --top_p 0.9 --seed 1

Decoding keeps a KV cache (pretrain/model/kv_cache.py) of prompt + max_new_tokens slots, so generation is linear
in its length: one compiled prefill runs the prompt (padded to a power-of-two bucket) and writes its keys and
values, then one compiled decode step (the cache donated) runs each new token over itself and attends over the
cache. Greedy output equals a full recompute's. The prompt starts with the BOS (cls) token, as pretraining packs
every document as [cls] text [sep] (--no_bos: without it); decoding stops at the end-of-document (sep) token or
after --max_new_tokens. Exit status 2 on bad input.
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
from pretrain.model.kv_cache import KVCache


def check_settings(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
  require(max_new_tokens >= 1, f'--max_new_tokens: must be at least 1, got {max_new_tokens}')
  require(temperature >= 0, f'--temperature: must be >= 0 (0 is greedy), got {temperature}')
  require(top_k >= 0, f'--top_k: must be >= 0 (0 keeps every token), got {top_k}')
  require(0 < top_p <= 1, f'--top_p: must be in (0, 1], got {top_p}')


def check_causal(loaded: model_load.LoadedCheckpoint) -> None:
  require(loaded.classifier is None, f"--checkpoint: {loaded.step_dir} is a fine-tuned classifier "
          f"(task {loaded.classifier and loaded.classifier['task']!r}); generate needs a causal language model")
  require(loaded.model_cfg.causal, f'--checkpoint: {loaded.step_dir} is a {presets.describe(loaded.model_cfg)} '
          '(bidirectional) model; generate needs a causal (gpt2, llama) checkpoint; try tools.fill_mask')


def filter_logits(logits_v: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
  """Logits with everything outside the top_k (0: no limit) and the top_p nucleus set to -inf."""
  vocab = logits_v.shape[-1]
  sorted_v = jnp.sort(logits_v)[::-1]
  kth = sorted_v[jnp.clip(top_k - 1, 0, vocab - 1)]
  logits_v = jnp.where((top_k > 0) & (logits_v < kth), -jnp.inf, logits_v)
  # Nucleus: the fewest most likely tokens whose probabilities reach top_p (the top token always stays).
  sorted_v = jnp.sort(logits_v)[::-1]
  probs_v = jax.nn.softmax(sorted_v)
  keep_v = ((jnp.cumsum(probs_v) - probs_v) < top_p) | (top_p >= 1)
  threshold = jnp.min(jnp.where(keep_v, sorted_v, jnp.inf))
  return jnp.where(logits_v < threshold, -jnp.inf, logits_v)


def pick(logits_v: jax.Array, known: int, key: jax.Array, t: jax.Array, temperature: jax.Array, top_k: jax.Array,
         top_p: jax.Array) -> jax.Array:
  """The id for slot t + 1 from the logits at t: greedy (temperature 0), else sampled with key folded with t.
  known: the tokenizer's vocab size (the model's vocab may be padded past it)."""
  logits_v = jnp.where(jnp.arange(logits_v.shape[-1]) < known, logits_v, -jnp.inf)
  greedy = jnp.argmax(logits_v).astype(jnp.int32)
  scaled_v = logits_v / jnp.where(temperature > 0, temperature, 1.0)
  sampled = jax.random.categorical(jax.random.fold_in(key, t), filter_logits(scaled_v, top_k, top_p))
  return jnp.where(temperature > 0, sampled.astype(jnp.int32), greedy)


@functools.partial(jax.jit, static_argnames=('graphdef', 'known', 'slots'))
def prefill(graphdef, known, slots, params, tokens_l, n, key, *settings):
  """(a KV cache of `slots` slots holding the prompt tokens_l[:n] (the rest of tokens_l is padding, written into
  slots the decode steps overwrite before reading), the id picked for slot n)."""
  model = nnx.merge(graphdef, params)
  logits_11v, cache = model.decode(tokens_l[None], KVCache.zeros(model.cfg, 1, slots),
                                   predict_positions=(n - 1)[None, None])
  return cache._replace(index=n), pick(logits_11v[0, 0], known, key, n - 1, *settings)


@functools.partial(jax.jit, static_argnames=('graphdef', 'known'), donate_argnames=('cache',))
def decode_step(graphdef, known, params, cache, token, key, *settings):
  """(the cache with `token` written in slot cache.index, the id picked for the slot after it)."""
  model = nnx.merge(graphdef, params)
  logits_11v, new_cache = model.decode(token[None, None], cache)
  return new_cache, pick(logits_11v[0, 0], known, key, cache.index, *settings)


def prompt_bucket(n: int, slots: int) -> int:
  """The padded prompt length: the next power of two from 16 (few prefill compilations), at most `slots`."""
  return min(slots, max(16, 1 << (n - 1).bit_length()))


def generate(loaded: model_load.LoadedCheckpoint, prompt_ids: list[int], max_new_tokens: int,
             temperature: float = 0., top_k: int = 0, top_p: float = 1., seed: int = 0,
             stop_id: int | None = None) -> list[int]:
  """The new ids after prompt_ids (ending with stop_id when it was produced). temperature 0 is greedy;
  sampling is keyed by seed and the position, so the same seed gives the same text."""
  check_settings(max_new_tokens, temperature, top_k, top_p)
  check_causal(loaded)
  n = len(prompt_ids)
  require(n > 0, '--prompt: no tokens to continue (an empty prompt needs the BOS token)')
  length = n + max_new_tokens
  limit = loaded.model_cfg.max_position_embeddings
  require(length <= limit, f'--max_new_tokens: the prompt ({n} tokens) plus {max_new_tokens} new '
          f'tokens exceed the model\'s max_position_embeddings {limit}; use at most {limit - n}')
  graphdef, _ = nnx.split(loaded.build())
  tokens_l = np.full((prompt_bucket(n, length),), loaded.tokenizer.pad_id, np.int32)
  tokens_l[:n] = prompt_ids
  fixed = (graphdef, loaded.tokenizer.vocab_size)
  key = jax.random.key(seed)
  settings = (jnp.float32(temperature), jnp.int32(top_k), jnp.float32(top_p))
  cache, next_id = prefill(*fixed, length, loaded.params, jnp.asarray(tokens_l), jnp.int32(n), key, *settings)
  new_ids = [int(next_id)]
  while len(new_ids) < max_new_tokens and new_ids[-1] != stop_id:
    cache, next_id = decode_step(*fixed, loaded.params, cache, next_id, key, *settings)
    new_ids.append(int(next_id))
  return new_ids


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(prog='python -m tools.generate', description=__doc__.splitlines()[0])
  parser.add_argument('--checkpoint', required=True,
                      help='a gpt2 or llama workdir, its checkpoints/ dir or a step dir')
  parser.add_argument('--prompt', required=True, help='the text to continue')
  parser.add_argument('--max_new_tokens', type=int, default=32, help='at most this many tokens are added')
  parser.add_argument('--temperature', type=float, default=0.0, help='0: greedy; > 0: sampling')
  parser.add_argument('--top_k', type=int, default=0, help='sample among the k most likely tokens (0: all)')
  parser.add_argument('--top_p', type=float, default=1.0, help='sample from the nucleus of this probability')
  parser.add_argument('--seed', type=int, default=0, help='seed of the sampling')
  parser.add_argument('--no_bos', action='store_true', help='do not start the prompt with the BOS (cls) token')
  return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
  check_settings(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
  loaded = model_load.load_checkpoint(args.checkpoint)
  check_causal(loaded)
  tok = loaded.tokenizer
  prompt_ids = ([] if args.no_bos else [tok.cls_id]) + tok.encode(args.prompt)
  new_ids = generate(loaded, prompt_ids, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                     args.seed, stop_id=tok.sep_id)
  text = tok.decode(prompt_ids + new_ids)  # special ids decode to nothing
  print(text)
  return text


def main(argv: Sequence[str] | None = None) -> int:
  return tool_main(parse_args, run, argv)


if __name__ == '__main__':
  sys.exit(main())
