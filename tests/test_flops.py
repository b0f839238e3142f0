"""Model FLOPs: the counter against a hand count, against XLA's own count of the compiled step, and MFU."""
import dataclasses

import jax
import pytest

from pretrain import trainer
from pretrain.model import flops
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


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_flops_agree_with_xla_cost_analysis_of_the_compiled_step(objective):
  """XLA counts every op of the compiled step on one device (it is reliable on CPU), but a scanned layer's
  body only once whatever the trip count, so the model has one layer; and it counts the dense attention a
  causal mask discards, which the counter leaves out."""
  config = tiny_config(objective)
  config.model.num_layers, config.model.hidden_size, config.model.mlp_dim = 1, 256, 1024
  config.data.seq_len = config.model.max_position_embeddings = 128
  config.model.dropout_rate = 0.0
  settings = PretrainSettings.from_config(config)
  model_cfg = settings.model
  plan = plan_mesh(settings, {'data': 1, 'fsdp': 1, 'tensor': 1}, jax.devices()[:1])
  xla_flops = compile_step(plan)[0].cost_analysis()['flops']
  ours = trainer.flops_per_step(settings)
  t, d, tokens = config.data.seq_len, model_cfg.hidden_size, config.train.batch_size * config.data.seq_len
  masked_half = 3 * 4 * d * (t - (t + 1) / 2) * tokens if objective == 'clm' else 0
  # The rest (LayerNorm, GELU, softmax, the optimizer update) is measured at 2-3% of the step.
  assert ours + masked_half <= xla_flops <= 1.05 * (ours + masked_half)


def test_model_flops_utilization_divides_by_the_chips_peak():
  v5p = accelerators.get_accelerator('v5p')
  assert v5p.peak_flops_per_s == 459e12
  # 64 chips running 459 TFLOP/s each for half a second do 64 * 459e12 * 0.5 FLOPs: a step of twice that is 50%.
  assert accelerators.model_flops_utilization(64 * 459e12, 2.0, 64, v5p) == pytest.approx(0.5)
