"""Model FLOPs: the counter against a hand count, against XLA's own count of the compiled step, and MFU."""
import dataclasses

import jax
import pytest
from flax import nnx

from pretrain import trainer
from pretrain.model import flops, presets
from pretrain.model.config import ModelConfig
from pretrain.model.heads import LanguageModel
from pretrain.runtime import accelerators
from pretrain.settings import PretrainSettings
from tests.helpers import tiny_config, tiny_model_config
from tools.plan.mesh import compile_step, plan_mesh


def test_train_flops_per_token_match_a_hand_count():
  # tiny_model_config: 2 layers, d=64, f=128, V=512, 4 heads; seq_len T=32.
  # Projections per layer: q, k, v, out 4*64*64 = 16384 weights, MLP 2*64*128 = 16384: 32768 weights.
  #   forward 2 FLOPs per weight and token: 2 * 2 layers * 32768 = 131072.
  # bert (bidirectional): attention 4 * d * T per layer = 4 * 64 * 32 * 2 layers = 16384.
  #   MLM: K = round(32 * 0.15) = 5 slots per sequence pass the transform (64*64) and the output layer (64*512):
  #   2 * (4096 + 32768) * 5 / 32 = 11520.
  #   forward 131072 + 16384 + 11520 = 158976; training x3 = 476928.
  bert = tiny_model_config('mlm')
  assert flops.forward_flops_breakdown(bert, 32, predicted_per_sequence=5) == {
      'projections': 131072, 'attention': 16384, 'head': 11520}
  assert flops.train_flops_per_token(bert, 32, 5) == 476928
  # The run's count takes K from its objective (mlm.mask_prob 0.15 of 32 tokens).
  assert trainer.flops_per_token(PretrainSettings.from_config(tiny_config('mlm'))) == 476928
  # gpt2 (causal): a query sees (32 + 1) / 2 = 16.5 keys on average: 4 * 64 * 16.5 * 2 layers = 8448.
  #   CLM: every token passes the tied output layer: 2 * 64 * 512 = 65536.
  #   forward 131072 + 8448 + 65536 = 205056; training x3 = 615168.
  gpt2 = tiny_model_config('clm')
  assert flops.train_flops_per_token(gpt2, 32, 32) == 615168
  # A sentence head adds the pooler (64*64) and the 2-way classifier (64*2) once per 32-token sequence:
  #   3 * 2 * (4096 + 128) / 32 = 792.
  assert flops.train_flops_per_token(dataclasses.replace(bert, sentence_head=True), 32, 5) == 476928 + 792
  assert trainer.flops_per_step(PretrainSettings.from_config(tiny_config('clm'))) == 615168 * 8 * 32  # 8 x 32


def llama_config(**overrides):
  """tiny_config's sizes with the llama preset (configs/pretrain_llama.py's architecture) on causal LM."""
  return tiny_config('clm', **{**presets.preset_fields('llama'), **overrides})


def test_llama_flops_per_token_match_a_hand_count_and_the_models_weights():
  # 2 layers, d=64, n=4 query heads and g=2 key/value heads of width h=32 (n h = 128 != d), SwiGLU f=96,
  # an untied output layer, V=512; seq_len T=32.
  # Projections per layer: q and out 2 * d n h = 2*64*4*32 = 16384 weights, k and v 2 * d g h = 2*64*2*32 = 8192,
  #   SwiGLU gate, up and down 3 * d f = 3*64*96 = 18432: 43008 weights; forward 2 * 2 layers * 43008 = 172032.
  # Causal attention over (32 + 1) / 2 = 16.5 keys: 4 n h * 16.5 = 4*4*32*16.5 = 8448 per layer, 16896.
  # The untied head on every token: 2 * 64*512 = 65536.
  # forward 172032 + 16896 + 65536 = 254464; training x3 = 763392.
  config = llama_config(num_kv_heads=2, head_dim=32, mlp_dim=96)
  llama = ModelConfig.from_config(config.model)
  assert presets.preset_of(llama) == 'llama'
  assert flops.forward_flops_breakdown(llama, 32, predicted_per_sequence=32) == {
      'projections': 172032, 'attention': 16896, 'head': 65536}
  assert flops.train_flops_per_token(llama, 32, 32) == 763392
  assert trainer.flops_per_token(PretrainSettings.from_config(config)) == 763392
  # Tying the head changes no FLOPs (the same d x V matmul).
  assert flops.train_flops_per_token(dataclasses.replace(llama, tie_embeddings=True), 32, 32) == 763392
  # The weights counted are the model's: per layer 43008 projection weights and two RMSNorm scales (d each),
  # a final RMSNorm, the embedding and the untied head (V d each); no biases.
  model = nnx.eval_shape(lambda: LanguageModel(llama, nnx.Rngs(0)))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert params == 2 * (43008 + 2 * 64) + 64 + 2 * 512 * 64


def test_modernbert_flops_per_token_match_a_hand_count_and_the_models_weights():
  # tiny_model_config('modernbert'): 2 layers, d=64, GeGLU f=128, V=512, 4 heads of 16; seq_len T=32.
  # Projections per layer: q, k, v, out 4*64*64 = 16384 weights, GeGLU gate, up and down 3*64*128 = 24576:
  #   40960 weights; forward 2 * 2 layers * 40960 = 163840.
  # Bidirectional attention over all T keys, in the local layer too (the dense kernel computes every score, the
  #   window only masks them): 4 * 64 * 32 * 2 layers = 16384.
  # MLM at mask_prob 0.3: K = round(32 * 0.3) = 10 slots per sequence pass the head's dense layer (64*64) and the
  #   tied output layer (64*512): 2 * (4096 + 32768) * 10 / 32 = 23040.
  # forward 163840 + 16384 + 23040 = 203264; training x3 = 609792.
  config = tiny_config('modernbert')
  modernbert = ModelConfig.from_config(config.model)
  assert presets.preset_of(modernbert) == 'modernbert' and modernbert.mlp == 'geglu'
  assert flops.forward_flops_breakdown(modernbert, 32, predicted_per_sequence=10) == {
      'projections': 163840, 'attention': 16384, 'head': 23040}
  assert trainer.flops_per_token(PretrainSettings.from_config(config)) == 609792
  # The weights counted are the model's. Besides them: per layer two LayerNorm scales (no biases; layer 0's
  # attention norm is stacked with the others but unused), the embedding (V d), its norm and the final norm, the
  # head's dense layer (d^2, no bias) and norm, and the output bias (V).
  model = nnx.eval_shape(lambda: LanguageModel(modernbert, nnx.Rngs(0)))
  params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert params == 2 * (40960 + 2 * 64) + 512 * 64 + 2 * 64 + 64 * 64 + 64 + 512


def _one_layer_config(kind: str):
  if kind == 'llama':  # grouped-query attention (2 kv heads), heads of 96 (n h = 384 != d), SwiGLU
    return llama_config(num_layers=1, hidden_size=256, num_kv_heads=2, head_dim=96, mlp_dim=768)
  config = tiny_config(kind)  # modernbert: its one layer global (a local one computes the same dense scores)
  config.model.num_layers, config.model.hidden_size, config.model.mlp_dim = 1, 256, 1024
  return config


@pytest.mark.parametrize('kind', ['mlm', 'clm', 'llama', 'modernbert'])
def test_flops_agree_with_xla_cost_analysis_of_the_compiled_step(kind):
  """XLA counts every op of the compiled step on one device (it is reliable on CPU), but a scanned layer's
  body only once whatever the trip count, so the model has one layer; and it counts the dense attention a
  causal mask discards, which the counter leaves out."""
  config = _one_layer_config(kind)
  config.data.seq_len = config.model.max_position_embeddings = 128
  config.model.dropout_rate = 0.0
  settings = PretrainSettings.from_config(config)
  model_cfg = settings.model
  plan = plan_mesh(settings, {'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
  xla_flops = compile_step(plan)[0].cost_analysis()['flops']
  ours = trainer.flops_per_step(settings)
  t, tokens = config.data.seq_len, config.train.batch_size * config.data.seq_len
  width = model_cfg.num_heads * model_cfg.head_dim  # q.k and the sum over v: 4 n h FLOPs per key
  masked_half = 3 * 4 * width * (t - (t + 1) / 2) * tokens if model_cfg.causal else 0
  # The rest (norms, GELU or SiLU, rotary, softmax, the optimizer update) is measured at 2-3% of the step.
  assert ours + masked_half <= xla_flops <= 1.05 * (ours + masked_half)


def test_model_flops_utilization_divides_by_the_chips_peak():
  v5p = accelerators.get_accelerator('v5p')
  assert v5p.peak_flops_per_s == 459e12
  # 64 chips running 459 TFLOP/s each for half a second do 64 * 459e12 * 0.5 FLOPs: a step of twice that is 50%.
  assert accelerators.model_flops_utilization(64 * 459e12, 2.0, 64, v5p) == pytest.approx(0.5)
