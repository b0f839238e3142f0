"""python -m finetune --config configs/finetune_glue.py:task=sst2 --workdir DIR \
     --config.init_checkpoint=CKPT --config.data.source=glue_dir:PATH [--config.seed=S ...]"""
from absl import app, flags, logging
from ml_collections import config_flags

from pretrain.core.cli import fail, parse_flags
from pretrain.core.errors import ConfigError

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/finetune_glue.py:task=sst2.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for results.json, predictions/ and metrics.jsonl.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  from finetune import train  # after flag parsing, so --help stays fast
  from pretrain.metrics_log import quiet_library_logs
  quiet_library_logs()
  try:
    train.run(_CONFIG.value, _WORKDIR.value)
  except ConfigError as e:
    logging.flush()
    fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
