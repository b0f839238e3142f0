"""metrics.jsonl on resume: lines a dead run wrote after its last checkpoint are dropped, torn lines too; MFU
figures; TensorBoard event files, written without importing torch."""
import json
import pathlib
import struct
import subprocess
import sys

import pytest

from pretrain.runtime.metrics_log import MetricsLog


def test_resume_drops_lines_after_the_checkpoint_and_torn_lines(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  lines = [json.dumps({'step': s, 'loss': 1.0 / s}) for s in (1, 2, 3, 4)] + ['{"step": 5, "lo']
  path.write_text('\n'.join(lines) + '\n')
  log = MetricsLog(str(tmp_path), total_steps=10, start_step=2)
  log.train(3, {'loss': 0.25, 'learning_rate': 1e-3}, tokens_per_step=64)
  log.eval(3, {'eval_loss': 0.5})
  log.close()
  records = [json.loads(line) for line in path.read_text().splitlines()]
  assert [(r['step'], 'eval_loss' in r) for r in records] == [(1, False), (2, False), (3, False), (3, True)]
  assert records[2]['loss'] == 0.25 and records[2]['tokens_per_sec'] > 0
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_train_records_model_flops_per_device_and_mfu_when_the_peak_is_known(tmp_path):
  log = MetricsLog(str(tmp_path), total_steps=10, start_step=0, flops_per_token=3e9, peak_flops_per_s=8e12,
                   num_devices=2)
  log.train(1, {'loss': 1.0, 'learning_rate': 1e-3}, tokens_per_step=1000)
  unknown_peak = MetricsLog(str(tmp_path / 'cpu'), total_steps=10, start_step=0, flops_per_token=3e9)
  unknown_peak.train(1, {'loss': 1.0, 'learning_rate': 1e-3}, tokens_per_step=1000)
  for l in (log, unknown_peak):
    l.close()
  record = json.loads((tmp_path / 'metrics.jsonl').read_text())
  assert record['model_tflops_per_sec'] == record['tokens_per_sec'] * 3e9 / 2 / 1e12
  assert record['mfu'] == record['tokens_per_sec'] * 3e9 / 8e12
  cpu_record = json.loads((tmp_path / 'cpu' / 'metrics.jsonl').read_text())
  assert 'mfu' not in cpu_record and cpu_record['model_tflops_per_sec'] > 0


def _scalars(event_file) -> dict:
  """{(tag, step): value} from a TensorBoard event file (TFRecord frames: length, its CRC, the Event, its CRC)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  data, at, scalars = event_file.read_bytes(), 0, {}
  while at < len(data):
    length = struct.unpack('<Q', data[at:at + 8])[0]
    event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
    for value in event.summary.value:
      scalars[(value.tag, event.step)] = value.simple_value
    at += 12 + length + 4
  return scalars


def test_tensorboard_events_are_written_without_importing_torch(tmp_path):
  """tensorboardX imports torch whenever it is installed (3-5 s and 0.6 GB for each training process); a
  training process's TensorBoard writer must not, and the user's own `import torch` still works after it."""
  pytest.importorskip('torch')
  script = (f'import sys\nfrom pretrain.runtime.metrics_log import MetricsLog\n'
            f'log = MetricsLog({str(tmp_path)!r}, total_steps=2, start_step=0)\n'
            "log.train(1, {'loss': 2.5, 'learning_rate': 1e-3}, tokens_per_step=64)\n"
            "log.eval(1, {'eval_loss': 3.25})\nlog.close()\n"
            "print('torch' in sys.modules)\nimport torch\nprint(torch.ones(2).sum().item())\n")
  result = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=300,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.split() == ['False', '2.0']
  events, = (tmp_path / 'tensorboard').glob('events.out.tfevents.*')
  scalars = _scalars(events)
  assert scalars[('loss', 1)] == 2.5 and scalars[('eval_loss', 1)] == 3.25 and ('learning_rate', 1) in scalars
