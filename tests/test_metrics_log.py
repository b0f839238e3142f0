"""metrics.jsonl on resume: lines a dead run wrote after its last checkpoint are dropped, torn lines too."""
import json

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
