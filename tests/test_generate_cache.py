"""tools.generate's KV cache on trained tiny gpt2 (learned positions) and llama (rotary, grouped-query attention)
checkpoints: cached decoding gives the full recompute's logits and greedy ids, the decode step compiles once for a
whole generation, and sampling is reproducible. (Greedy output against transformers: tests/test_lm_tools.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain.model import load as model_load
from pretrain.model.kv_cache import KVCache
from tools import generate

PROMPT = 'The function returns'


@pytest.fixture(scope='module')
def gpt2(checkpoints):
  return model_load.load_checkpoint(str(checkpoints.trained('clm')))


@pytest.fixture(scope='module')
def llama_workdir(checkpoints):
  return checkpoints.trained('llama')


@pytest.fixture(scope='module')
def llama(llama_workdir):
  loaded = model_load.load_checkpoint(str(llama_workdir))
  assert loaded.model_cfg.positions == 'rotary' and loaded.model_cfg.num_kv_heads < loaded.model_cfg.num_heads
  return loaded


@pytest.fixture(params=['gpt2', 'llama'])
def decoder(request):
  return request.getfixturevalue(request.param)


def prompt_ids(loaded, text: str = PROMPT) -> list[int]:
  return [loaded.tokenizer.cls_id] + loaded.tokenizer.encode(text)


class Reference:
  """The model without a cache (its plain forward pass over a fixed buffer, causal so later padding does not
  matter), and with one (LanguageModel.decode, as tools.generate calls it), on a checkpoint's weights."""

  def __init__(self, loaded):
    self.loaded = loaded
    graphdef, _ = nnx.split(loaded.build())
    self.full = jax.jit(lambda params, tokens_l: nnx.merge(graphdef, params)(tokens_l[None])[0])
    self.decode = jax.jit(lambda params, tokens_l, cache: nnx.merge(graphdef, params).decode(tokens_l[None], cache))

  def full_logits(self, ids: list[int]) -> np.ndarray:
    tokens_l = np.full((self.loaded.model_cfg.max_position_embeddings,), self.loaded.tokenizer.pad_id, np.int32)
    tokens_l[:len(ids)] = ids
    return np.asarray(self.full(self.loaded.params, jnp.asarray(tokens_l)))[:len(ids)]

  def generate(self, ids: list[int], new_tokens: int, temperature: float = 0., seed: int = 0) -> list[int]:
    """tools.generate's choice of tokens (no stop id) by full recompute over the growing sequence."""
    ids, key = list(ids), jax.random.key(seed)
    settings = (jnp.float32(temperature), jnp.int32(0), jnp.float32(1.0))
    for _ in range(new_tokens):
      logits_v = jnp.asarray(self.full_logits(ids)[-1])
      ids.append(int(generate.pick(logits_v, self.loaded.tokenizer.vocab_size, key, len(ids) - 1, *settings)))
    return ids[-new_tokens:]

  def cached_logits(self, ids: list[int], prompt_length: int, index_shift: int = 0) -> np.ndarray:
    """Logits of ids from a prefill of the first prompt_length (padded as generate pads it), then one token per
    decode step; index_shift misplaces the decoded tokens' slots (a bug the comparison must catch)."""
    slots = len(ids)
    tokens_l = np.full((generate.prompt_bucket(prompt_length, slots),), self.loaded.tokenizer.pad_id, np.int32)
    tokens_l[:prompt_length] = ids[:prompt_length]
    cache = KVCache.zeros(self.loaded.model_cfg, 1, slots)
    logits, cache = self.decode(self.loaded.params, jnp.asarray(tokens_l), cache)
    rows = [np.asarray(logits[0, :prompt_length])]
    cache = cache._replace(index=jnp.int32(prompt_length + index_shift))
    for token in ids[prompt_length:-1]:
      logits, cache = self.decode(self.loaded.params, jnp.asarray([token], jnp.int32), cache)
      rows.append(np.asarray(logits[0]))
    return np.concatenate(rows)


def test_cached_decoding_equals_the_full_recompute(decoder):
  loaded = decoder
  ref = Reference(loaded)
  ids = prompt_ids(loaded)
  new_tokens = 20
  greedy = generate.generate(loaded, ids, new_tokens)
  assert greedy == ref.generate(ids, new_tokens)
  sampled = generate.generate(loaded, ids, new_tokens, temperature=1.0, seed=1)
  assert sampled == ref.generate(ids, new_tokens, temperature=1.0, seed=1)
  assert len(set(sampled)) > 3  # a varied sequence (a tiny model's greedy text may repeat one token)
  # The logits at every position, prompt and decoded tokens alike.
  everything = ids + sampled
  full_tv = ref.full_logits(everything)
  np.testing.assert_allclose(ref.cached_logits(everything, len(ids)), full_tv[:-1], atol=1e-5, rtol=1e-5)
  # The comparison catches a decoded token put one slot (one position) too far.
  shifted_tv = ref.cached_logits(everything, len(ids), index_shift=1)
  assert np.abs(shifted_tv[len(ids):] - full_tv[len(ids):-1]).max() > 1e-2


def test_decode_compiles_once_and_sampling_is_seeded(llama):
  ids = prompt_ids(llama)
  slots = 41  # prompt + new tokens: the cache's size, which no other test uses
  compiled = lambda: (generate.prefill._cache_size(), generate.decode_step._cache_size())
  before = compiled()
  sample = lambda prompt=ids, **kw: generate.generate(llama, prompt, slots - len(prompt), temperature=1.0, **kw)
  first = sample(top_k=20, seed=0)
  assert len(first) == slots - len(ids)  # no stop id: every step ran
  assert compiled() == (before[0] + 1, before[1] + 1)
  assert first == sample(top_k=20, seed=0)
  assert first != sample(top_k=20, seed=1)
  greedy = generate.generate(llama, ids, slots - len(ids))
  assert sample(top_k=1, seed=5) == greedy
  # Another prompt in the same prefill bucket, same cache size: nothing new to compile.
  other = prompt_ids(llama, 'import os')
  bucket = lambda prompt: generate.prompt_bucket(len(prompt), slots)
  assert len(other) != len(ids) and bucket(other) == bucket(ids)
  assert sample(other, seed=0) != first
  assert compiled() == (before[0] + 1, before[1] + 1)


def test_llama_cli(llama_workdir, llama, capsys):
  argv = ['--checkpoint', str(llama_workdir), '--prompt', PROMPT, '--max_new_tokens', '8']
  assert generate.main(argv) == 0
  ids = prompt_ids(llama)
  new_ids = generate.generate(llama, ids, 8, stop_id=llama.tokenizer.sep_id)
  assert capsys.readouterr().out == llama.tokenizer.decode(ids + new_ids) + '\n'
  # --no_bos: the prompt without the BOS token, which changes what follows.
  assert generate.main(argv + ['--no_bos']) == 0
  no_bos = generate.generate(llama, ids[1:], 8, stop_id=llama.tokenizer.sep_id)
  assert capsys.readouterr().out == llama.tokenizer.decode(ids[1:] + no_bos) + '\n'
