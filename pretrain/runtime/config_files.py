"""Loading a config file the way `python -m pretrain --config FILE[:ARG] --config.a.b=v` does, for argparse tools
(tools.plan, tools.launch): the locked ConfigDict, or one ConfigError line naming the file, arg or field."""
import difflib
import os
import re
from collections.abc import Sequence

from absl import flags
from ml_collections import config_flags

from pretrain.runtime.errors import ConfigError, require

OVERRIDE = re.compile(r'--(no)?config\.([A-Za-z_][\w.]*)(=.*)?', re.DOTALL)


def config_file(spec: str) -> str:
  """The file of FILE[:ARG] (ml_collections splits at the first colon)."""
  return spec.split(':', 1)[0]


def _parse(spec: str, overrides: Sequence[str]):
  argv = ['tool', f'--config={spec}', *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, flag_values=values, lock_config=True, sys_argv=argv)
  values(argv)
  return values.config


def _raised(e: BaseException) -> str:
  """The message of the exception a config file raised: the last line of the report, without its type name."""
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return re.sub(r'^[\w.]+(Error|Exception): ', '', lines[-1]) if lines else type(e).__name__


def _require_field(config, override: str) -> None:
  path = OVERRIDE.fullmatch(override).group(2)
  node, done = config, []
  for key in path.split('.'):
    keys = list(node.keys()) if hasattr(node, 'keys') else []
    if key not in keys:
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f' (did you mean --config.{".".join(done + close)}?)' if close else ''
      raise ConfigError(f'--config.{path}: no such config field{hint}')
    node, done = node[key], done + [key]


def load_config(spec: str, overrides: Sequence[str]):
  """The locked config of FILE[:ARG] with `--config.a.b=v` overrides applied."""
  path = config_file(spec)
  require(os.path.isfile(path), f'--config: {path}: no such file')
  for item in overrides:
    require(OVERRIDE.fullmatch(item) is not None,
            f'overrides: {item!r} is not --config.FIELD=VALUE (overrides go after --)')
  try:
    config = _parse(spec, [])
  except Exception as e:  # the config file raised: its last line (the exception), not the traceback
    raise ConfigError(f'--config={spec}: {_raised(e)}') from None
  for item in overrides:
    _require_field(config, item)
  try:
    return _parse(spec, overrides)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    raise ConfigError(str(e).strip().splitlines()[0].removeprefix('flag ')) from None


def parse_with_overrides(parser, argv: Sequence[str] | None):
  """parser.parse_args, with every --config.a.b=value kept in `args.overrides` (for load_config)."""
  args, extra = parser.parse_known_args(argv)
  unknown = [a for a in extra if not a.startswith('--config.')]
  if unknown:
    parser.error(f'unrecognized arguments: {" ".join(unknown)} (config overrides are --config.a.b=value)')
  args.overrides = extra
  return args
