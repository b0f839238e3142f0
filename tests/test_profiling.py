"""train.profile_steps: a jax.profiler trace of the chosen steps, laid out for TensorBoard's profile plugin."""
import gzip
import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from pretrain.runtime import profiling
from tests.helpers import ROOT, rejected_before_compiling, tiny_config
from tests.synthetic_corpus import write_synthetic_corpus

SMALL_TOKENIZER = ROOT / 'tests' / 'data' / 'pre_redesign' / 'tokenizer.model'  # any 512-piece one would do
TINY = ['--config', 'configs/pretrain_clm.py:size=tiny', '--config.model.num_layers=1',
        '--config.model.hidden_size=32', '--config.model.num_heads=2', '--config.model.mlp_dim=64',
        '--config.model.vocab_size=512', '--config.data.seq_len=32', '--config.train.batch_size=8',
        '--config.train.steps=5', '--config.train.warmup_steps=1', '--config.train.log_every=1',
        '--config.train.eval_every=5', '--config.train.eval_batches=1', f'--config.data.tokenizer={SMALL_TOKENIZER}']


def _traced(run_dir: pathlib.Path) -> tuple[list[int], int]:
  """A trace's `train` step annotations (their step_num) and its executions of the train step."""
  trace = json.loads(gzip.decompress((run_dir / f'{socket.gethostname()}.trace.json.gz').read_bytes()))
  events = trace['traceEvents']
  steps = sorted(int(e['args']['step_num']) for e in events if e.get('name') == 'train')
  return steps, sum(e.get('name') == 'CommonPjRtLoadedExecutable::Execute (jit_train_step)' for e in events)


def test_cli_writes_a_trace_of_the_profile_steps_for_tensorboard_and_perfetto(tmp_path):
  """profile_steps 2:4 of 5 steps: one TensorBoard run WORKDIR/profile/plugins/profile/<time>/<host>.xplane.pb
  (with the Chrome and Perfetto JSON beside it) holding steps 2 and 3 and no other. (Where a resume or a failing
  step starts or stops the trace: the StepProfiler tests below.)"""
  workdir = tmp_path / 'run'
  result = subprocess.run([sys.executable, '-m', 'pretrain', *TINY, '--workdir', str(workdir),
                           f'--config.data.source={write_synthetic_corpus(tmp_path / "corpus")}',
                           '--config.train.profile_steps=2:4'], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  runs = list((workdir / 'profile' / 'plugins' / 'profile').iterdir())
  assert len(runs) == 1, runs
  host = socket.gethostname()
  assert {p.name for p in runs[0].iterdir()} == {f'{host}.xplane.pb', f'{host}.trace.json.gz', 'perfetto_trace.json.gz'}
  assert f'profile of steps 2..3 written to {runs[0]}' in result.stderr
  assert _traced(runs[0]) == ([2, 3], 2)  # the annotations, and the two steps' executions


class _FakeProfiler:
  """jax.profiler's start_trace / stop_trace, recording the steps between them."""

  def __init__(self, monkeypatch):
    self.calls = []
    monkeypatch.setattr(profiling.jax.profiler, 'start_trace', lambda d, **kw: self.calls.append('start'))
    monkeypatch.setattr(profiling.jax.profiler, 'stop_trace', self._stop)

  def _stop(self):
    self.calls.append('stop')
    self.directory.mkdir(parents=True, exist_ok=True)

  def loop(self, tmp_path, span, first, last, enabled=True, fail_at=None):
    self.directory = tmp_path / 'profile' / 'plugins' / 'profile' / 'run'
    profiler = profiling.StepProfiler(span, str(tmp_path), enabled)
    try:
      for step in range(first, last):
        profiler.before(step)
        self.calls.append(step)
        if step == fail_at:
          raise RuntimeError('the step failed')
        profiler.after({'loss': 0.0})
    finally:
      profiler.close()
    return self.calls


@pytest.mark.parametrize('span,first,enabled,calls', [
    ((2, 4), 0, True, [0, 1, 'start', 2, 3, 'stop', 4, 5]),
    ((2, 4), 3, True, ['start', 3, 'stop', 4, 5]),  # resumed inside the span
    ((2, 4), 4, True, [4, 5]),  # resumed past it
    ((4, 9), 0, True, [0, 1, 2, 3, 'start', 4, 5, 'stop']),  # the loop ends first
    ((0, 1), 0, True, ['start', 0, 'stop', 1, 2, 3, 4, 5]),
    ((2, 4), 0, False, [0, 1, 2, 3, 4, 5]),  # not the main process
    (None, 0, True, [0, 1, 2, 3, 4, 5]),
])
def test_the_trace_spans_the_steps_in_range(monkeypatch, tmp_path, span, first, enabled, calls):
  assert _FakeProfiler(monkeypatch).loop(tmp_path, span, first, 6, enabled) == calls


def test_a_failing_step_stops_the_trace(monkeypatch, tmp_path):
  fake = _FakeProfiler(monkeypatch)
  with pytest.raises(RuntimeError, match='the step failed'):
    fake.loop(tmp_path, (1, 5), 0, 6, fail_at=2)
  assert fake.calls == [0, 'start', 1, 2, 'stop']


@pytest.mark.parametrize('value,match', [
    ('5:3', r"train\.profile_steps: '5:3' is not 'START:STOP' with integers 0 <= START < STOP"),
    ('3:3', r"train\.profile_steps: '3:3' is not 'START:STOP'"),
    ('x', r"train\.profile_steps: 'x' is not 'START:STOP'"),
    ('-1:3', r"train\.profile_steps: '-1:3' is not 'START:STOP'"),
    ('100', r"train\.profile_steps: '100' is not 'START:STOP'"),
    ('6:9', r"train\.profile_steps: '6:9' starts at or after train\.steps 6: no step would be traced"),
])
def test_bad_profile_steps_are_rejected_before_compiling(monkeypatch, tmp_path, value, match):
  config = tiny_config('clm')
  config.train.steps = 6
  config.train.profile_steps = value
  rejected_before_compiling(monkeypatch, config, tmp_path, match)
