"""tools.benchmark.pipeline: the input pipeline's tokens/s and the checkpoint stall, measured with the real pieces."""
import io

import jax
import numpy as np
import pytest

from pretrain.runtime import checkpoint as checkpoint_lib
from pretrain.runtime.errors import ConfigError
from tests.helpers import tiny_config
from tools.benchmark import pipeline as bench_input
from tools.benchmark.step import build


@pytest.mark.parametrize('objective', ['mlm', 'clm'])
def test_pipeline_figures_are_positive_and_consistent(objective):
  config = tiny_config(objective)
  result = bench_input.measure_input_pipeline(config, batches=4, warmup=1)
  assert result['objective'] == objective and result['batches'] == 4
  assert result['seconds'] > 0 and 0 <= result['transfer_ms'] <= result['batch_ms']
  tokens = 4 * config.train.batch_size * config.data.seq_len
  assert result['tokens_per_sec'] == pytest.approx(tokens / result['seconds'])
  assert result['batch_ms'] == pytest.approx(1000 * result['seconds'] / 4)


def test_stall_writes_checkpoints_that_restore_at_the_last_step(tmp_path):
  config = tiny_config('mlm')
  config.train.log_every = 2
  result = bench_input.measure_checkpoint_stall(config, str(tmp_path), steps=4, every=2, rounds=2)
  assert (result['steps'], result['every'], result['saves'], result['rounds']) == (4, 2, 2, 2)
  for key in ('step_ms', 'loop_s', 'loop_with_saves_s', 'save_blocking_ms', 'wait_ms',
              'stall_fraction_at_config_interval'):
    assert result[key] >= 0, key
  assert result['stall_fraction'] == pytest.approx(result['loop_with_saves_s'] / result['loop_s'] - 1)
  assert result['extra_ms_per_save'] == pytest.approx(
      1000 * (result['loop_with_saves_s'] - result['loop_s']) / result['saves'])
  assert result['stall_fraction_at_config_interval'] == pytest.approx(
      result['save_blocking_ms'] / (config.train.checkpoint_every * result['step_ms']))

  checkpointer = checkpoint_lib.Checkpointer(tmp_path)
  assert checkpointer.latest_step() == 4
  assert checkpointer.manager.all_steps() == [2, 4]  # the second round's saves replaced the first's
  state, data_state, meta = checkpointer.restore(4, build(config).trainer.abstract_state)
  checkpointer.close()
  assert int(jax.device_get(state['step'])) == 4 and data_state['step'] == 4 and 'hash' in data_state['fingerprint']
  assert meta['config']['objective'] == 'mlm'
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state['params']))

  report = io.StringIO()
  bench_input.print_input_report([{'objective': 'mlm', 'batches': 4, 'batch_ms': 1.0, 'transfer_ms': 0.1,
                                   'tokens_per_sec': 256_000.0}], result, step_tokens_per_sec=4000.0, file=report)
  assert '64.0' in report.getvalue() and 'stall' in report.getvalue()


def test_stall_needs_steps_a_multiple_of_every(tmp_path):
  with pytest.raises(ConfigError, match='steps: must be a positive multiple of every'):
    bench_input.measure_checkpoint_stall(tiny_config('mlm'), str(tmp_path), steps=5, every=2)
