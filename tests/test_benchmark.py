"""tools.benchmark: the figures it prints come from the timed steps and the shared FLOP counter; the peers run.

Speed itself is never asserted here (the machines are shared); the benchmark reports it.
"""
import dataclasses
import json

import jax
import pytest
from flax import nnx

from pretrain.model.heads import LanguageModel
from pretrain.runtime import accelerators
from pretrain.runtime.config_files import load_config
from pretrain.settings import PretrainSettings
from pretrain.trainer import flops_per_step
from tests.helpers import CLM_CONFIG, MLM_CONFIG, ROOT, TINY_OVERRIDES
from tools.benchmark import cli as benchmark
from tools.benchmark import peers

FIELDS = {'step_ms', 'tokens_per_sec', 'model_tflops_per_sec', 'mfu', 'compile_s', 'peak_memory_bytes'}


def _json_line(capfd) -> dict:
  out = capfd.readouterr().out.strip().splitlines()
  return json.loads(out[-1])


@pytest.mark.parametrize('config_spec', [MLM_CONFIG, CLM_CONFIG], ids=['mlm', 'clm'])
def test_figures_follow_from_the_median_step_and_the_flop_counter(config_spec, capfd):
  assert benchmark.main(['--config', config_spec, '--steps', '3', '--warmup', '1', '--accelerator', 'h100-80gb',
                         *TINY_OVERRIDES]) == 0
  out = capfd.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  assert FIELDS <= result.keys() and 'ours' in out and 'MFU' in out
  config = load_config(config_spec, TINY_OVERRIDES)
  step_s = result['step_ms'] / 1000
  tokens = config.train.batch_size * config.data.seq_len  # 8 x 32
  assert result['tokens_per_sec'] == pytest.approx(tokens / step_s)
  model_flops = flops_per_step(PretrainSettings.from_config(config))
  devices = result['devices']  # the test session's 8 CPU devices, data parallel
  assert result['model_tflops_per_sec'] == pytest.approx(model_flops / step_s / devices / 1e12)
  assert result['mfu'] == pytest.approx(model_flops / step_s / (devices * 989e12))
  assert result['compile_s'] > 0 and result['peak_memory_bytes'] > 0


def test_without_a_known_peak_there_is_no_mfu(capfd):
  assert benchmark.main(['--config', MLM_CONFIG, '--steps', '1', '--warmup', '0', *TINY_OVERRIDES]) == 0
  assert _json_line(capfd)['mfu'] is None  # a CPU device


def test_peers_run_the_same_size_in_their_own_processes_and_report_ratios(capfd):
  assert benchmark.main(['--config', MLM_CONFIG, '--steps', '2', '--warmup', '1', '--peers', *TINY_OVERRIDES]) == 0
  out = capfd.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  # Every peer ran (the test extra installs transformers 4.57.6 and torch), or says why it could not.
  assert set(result['peers']) | set(result['unavailable']) == {'hf-flax', 'hf-torch'}
  assert set(result['peers']) == {'hf-flax', 'hf-torch'}, result['unavailable']
  for name, peer in result['peers'].items():
    assert FIELDS <= peer.keys() and name in out
    assert peer['ours_speedup'] == pytest.approx(result['tokens_per_sec'] / peer['tokens_per_sec'])
    # The same model FLOPs per token for every system: their model TFLOP/s are in the ratio of their tokens/s.
    assert peer['model_tflops_per_sec'] / peer['tokens_per_sec'] == pytest.approx(
        result['model_tflops_per_sec'] / result['tokens_per_sec'])


def test_llama_peers_build_the_same_model_and_time_its_steps():
  # configs/pretrain_llama.py, tiny_config's sizes: 4 heads, 2 kv heads, SwiGLU, an untied head.
  config = load_config(str(ROOT / 'configs' / 'pretrain_llama.py') + ':size=tiny', TINY_OVERRIDES)
  settings = PretrainSettings.from_config(config)
  ours = nnx.eval_shape(lambda: LanguageModel(settings.model, nnx.Rngs(0)))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(ours, nnx.Param)))
  torch_model = peers.hf_model(settings, flax=False)
  assert type(torch_model).__name__ == 'LlamaForCausalLM' and torch_model.config.num_key_value_heads == 2
  assert sum(p.numel() for p in torch_model.parameters()) == num_params
  flax_model = peers.hf_model(settings, flax=True)
  assert type(flax_model).__name__ == 'FlaxLlamaForCausalLM'
  assert sum(x.size for x in jax.tree.leaves(flax_model.params)) == num_params
  for name, measure in peers.MEASURE.items():
    timing = measure(settings, flops_per_step(settings), 2, 1, None)
    figures = timing.figures()
    assert timing.name == name and len(timing.step_seconds) == 2
    assert figures['tokens_per_sec'] == pytest.approx(settings.tokens_per_step / (figures['step_ms'] / 1000))
  # Flax's Llama derives its head width from hidden_size / num_heads: another one is refused, naming the field.
  wide_heads = dataclasses.replace(settings, model=dataclasses.replace(settings.model, head_dim=32))
  with pytest.raises(peers.PeerUnavailable, match='model.head_dim: FlaxLlamaForCausalLM has heads of '):
    peers.hf_model(wide_heads, flax=True)


@pytest.mark.parametrize('argv,field', [
    (['--steps', '0'], '--steps'),
    (['--accelerator', 'tpu-v99'], '--accelerator'),
    (['--config.model.num_heads=3'], 'model.num_heads'),
])
def test_bad_flags_are_one_line_naming_the_flag_before_any_compile(argv, field, capfd):
  assert benchmark.main(['--config', MLM_CONFIG, *TINY_OVERRIDES, *argv]) == 2
  err = capfd.readouterr().err.strip()
  assert err.startswith('error: ') and field in err and '\n' not in err


@pytest.mark.parametrize('device_kind,name', [
    ('NVIDIA H100 80GB HBM3', 'h100-80gb'), ('NVIDIA H200', 'h200'), ('NVIDIA A100-SXM4-40GB', 'a100-40gb'),
    ('TPU v4', 'v4'), ('TPU v5 lite', 'v5e'), ('TPU v5p', 'v5p'), ('TPU v6 lite', 'v6e'), ('cpu', None),
    ('NVIDIA H100 PCIe', None)])
def test_the_device_kind_names_the_peak(device_kind, name):
  detected = accelerators.detect(device_kind)
  assert (detected.name if detected else None) == name


def test_input_mode_reports_the_pipeline_against_the_step_and_the_checkpoint_stall(capfd):
  assert benchmark.main(['--config', CLM_CONFIG, '--steps', '2', '--warmup', '1', '--input', *TINY_OVERRIDES]) == 0
  out = capfd.readouterr().out
  result = json.loads(out.strip().splitlines()[-1])
  assert result['input_over_step'] == pytest.approx(result['input']['tokens_per_sec'] / result['step_tokens_per_sec'])
  assert result['input']['objective'] == 'clm' and result['checkpoint']['saves'] == 4
  assert 0 <= result['checkpoint']['stall_fraction_at_config_interval'] and 'checkpoint every' in out
