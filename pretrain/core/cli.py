"""Command-line conventions shared by the entry points: bad flags and configs give one line and exit code 2."""
import re
import sys
from typing import NoReturn

from absl import flags


def fail(message: str) -> NoReturn:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _last_line(text: str) -> str:
  lines = [line.strip() for line in str(text).splitlines() if line.strip()]
  return lines[-1] if lines else ''


def parse_flags(argv: list[str]) -> list[str]:
  """An absl `flags_parser` for app.run: a bad flag, config file, config arg or override is one line, exit 2."""
  try:
    remaining = flags.FLAGS(argv)
    for name in flags.FLAGS:  # a config file that failed to load raises on first use: make that now
      getattr(flags.FLAGS[name].value, 'keys', None)
    return remaining
  except flags.Error as e:
    first = str(e).splitlines()[0]
    # A config file that raised: the flag, then the exception the file raised (its traceback dropped).
    fail(first if first == _last_line(e) else f'{first.rstrip(":")}: {_last_line(e)}')
  except OSError as e:  # a config file that does not exist
    fail(f'--config: {_last_line(e)}')
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # raised by config overrides
    text = ' '.join(str(e).replace('\\n', ' ').split()).strip('\'"')
    text = re.sub(r"^'([^']+)' ", r'no config field \1: ', text.replace("\\'", "'"))
    fail(f'--config: {text}')
