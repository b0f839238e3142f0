"""python -m pretrain --config configs/pretrain_mlm.py:size=tiny --workdir DIR [--config.train.steps=N ...]"""
from absl import app, flags, logging
from ml_collections import config_flags

from pretrain.core.cli import fail, parse_flags
from pretrain.core.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/pretrain_mlm.py:size=tiny.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from pretrain import train  # after flag parsing, so --help stays fast
  from pretrain.metrics_log import quiet_library_logs
  quiet_library_logs()
  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    logging.flush()
    fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
