"""train.loss_chunk_tokens: the output layer and the cross-entropy over chunks of tokens
(objectives.chunked_cross_entropy) give the unchunked sums and gradients, with [chunk, vocab] logits in memory
instead of [tokens, vocab]."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from pretrain import objectives
from pretrain.model.heads import LanguageModel
from pretrain.runtime import sharding
from pretrain.runtime.errors import ConfigError
from pretrain.settings import PretrainSettings
from pretrain.train_step import make_steps
from tests.helpers import tiny_config, tiny_model_config


def _grads_and_sums(config, chunk_tokens: int):
  """(unchunked, chunked) (gradients of the mean loss, loss sums) of one batch, from the real steps in one jit."""
  settings = PretrainSettings.from_config(config)
  mesh = sharding.make_mesh(config.mesh)
  with sharding.use_mesh_and_rules(mesh, config.sharding_rules):
    build = lambda: LanguageModel(settings.model, nnx.Rngs(0))  # noqa: E731
    graphdef = nnx.split(nnx.eval_shape(build))[0]
    params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build())))()
    grads_fns = [make_steps(graphdef, None, objectives.build(config.objective, settings.mlm, settings.model.vocab_size,
                                                             loss_chunk_tokens=chunk)).grads
                 for chunk in (0, chunk_tokens)]
    state = {'step': jnp.zeros((), jnp.int32), 'params': params,
             'rng': jax.random.key_data(jax.random.key(0))}
    b, t = config.train.batch_size, config.data.seq_len
    rng = np.random.default_rng(0)
    local = {'tokens': rng.integers(5, config.model.vocab_size, (b, t)).astype(np.int32),
             'segment_ids': np.repeat(np.arange(1, 5), t // 4)[None].repeat(b, 0).astype(np.int32),
             'positions': np.tile(np.arange(t // 4), 4)[None].repeat(b, 0).astype(np.int32)}
    batch = sharding.global_batch_from_local(local, sharding.batch_sharding(mesh, config.sharding_rules))
    return jax.device_get(jax.jit(lambda s, b: [grads(s, b) for grads in grads_fns])(state, batch))


@pytest.mark.parametrize('kind, chunk_tokens', [('clm', 24), ('mlm', 3)])
def test_chunked_sums_and_gradients_equal_the_unchunked_ones(kind, chunk_tokens):
  """gpt2 (tied output layer) and bert MLM (transform + bias, gathered positions). Mesh data 2 x fsdp 2 x tensor 2:
  each of the 4 batch shards holds 2 rows, 64 (clm) or 2 x K (mlm) tokens, which the chunk does not divide (padded
  with weight 0). A vocabulary of 16, so that the untrained model predicts some tokens right (correct_sum > 0)."""
  config = tiny_config(kind, vocab_size=16)
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 2, 2, 2
  (grads_0, sums_0), (grads_c, sums_c) = _grads_and_sums(config, chunk_tokens)
  assert sums_c['weight_sum'] == sums_0['weight_sum'] > 0
  assert sums_c['correct_sum'] == sums_0['correct_sum'] > 0
  np.testing.assert_allclose(sums_c['loss_sum'], sums_0['loss_sum'], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), grads_c, grads_0)
  assert np.abs(grads_c['encoder']['token_embed']).max() > 0


def _loss_grad_temp_bytes(cfg, batch: int, length: int, chunk_tokens: int) -> int:
  """Compiled temporaries of the gradient of chunked_cross_entropy w.r.t. the parameters and the hidden states."""
  graphdef, params = nnx.split(nnx.eval_shape(lambda: LanguageModel(cfg, nnx.Rngs(0))))

  def loss(params, hidden_btd, targets_bt, weights_bt):
    model = nnx.merge(graphdef, params)
    return objectives.chunked_cross_entropy(model.logits, hidden_btd, targets_bt, weights_bt, chunk_tokens)['loss_sum']

  args = (params, jax.ShapeDtypeStruct((batch, length, cfg.hidden_size), jnp.float32),
          jax.ShapeDtypeStruct((batch, length), jnp.int32), jax.ShapeDtypeStruct((batch, length), jnp.float32))
  compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
  return compiled.memory_analysis().temp_size_in_bytes


def test_chunked_loss_memory_grows_with_the_chunk_not_the_length():
  """vocab 8192, hidden 32: the float32 logits (2 x 1024 tokens: 64 MiB, held with their gradient: 128 MiB)
  dominate; a chunk of 128 tokens holds 4 MiB of them (measured 9.3 MiB in all), and doubling the length at that
  chunk adds only hidden-state-sized arrays (measured +0.3 MiB; unchunked +128 MiB)."""
  cfg = tiny_model_config('clm', vocab_size=8192, hidden_size=32, num_heads=2, max_position_embeddings=2048)
  logits_bytes = 2 * 1024 * cfg.vocab_size * 4
  unchunked = _loss_grad_temp_bytes(cfg, 2, 1024, 0)
  chunked = _loss_grad_temp_bytes(cfg, 2, 1024, 128)
  chunked_twice_as_long = _loss_grad_temp_bytes(cfg, 2, 2048, 128)
  assert unchunked >= logits_bytes, unchunked
  assert chunked <= unchunked / 8, (chunked, unchunked)
  assert chunked_twice_as_long <= 1.1 * chunked, (chunked_twice_as_long, chunked)


def test_no_more_tokens_than_a_chunk_is_the_unchunked_computation():
  cfg = tiny_model_config('clm')
  hidden_btd = jax.random.normal(jax.random.key(1), (2, 16, cfg.hidden_size))
  targets_bt = jax.random.randint(jax.random.key(2), (2, 16), 0, cfg.vocab_size)
  weights_bt = jnp.ones((2, 16))

  @jax.jit
  def sums(hidden_btd, targets_bt, weights_bt):
    model = LanguageModel(cfg, nnx.Rngs(0))
    chunked = [objectives.chunked_cross_entropy(model.logits, hidden_btd, targets_bt, weights_bt, chunk_tokens)
               for chunk_tokens in (0, 32, 4096)]
    return objectives.weighted_cross_entropy(model.logits(hidden_btd), targets_bt, weights_bt), chunked

  expected, chunked = sums(hidden_btd, targets_bt, weights_bt)
  for got in chunked:
    jax.tree.map(np.testing.assert_array_equal, got, expected)


@pytest.mark.parametrize('value', [-1, -4096])
def test_negative_chunk_is_an_error_naming_it(value):
  config = tiny_config('clm')
  config.train.loss_chunk_tokens = value
  with pytest.raises(ConfigError, match='train.loss_chunk_tokens'):
    PretrainSettings.from_config(config)
