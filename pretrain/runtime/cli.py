"""Command-line conventions shared by the entry points: bad flags and configs give one line and exit code 2.

Errors the user can act on are one line, `error: ...`, last on stderr. FLAX_PRETRAIN_TRACEBACK=1 in the environment
prints the full traceback above that line too, for bug reports.
"""
import argparse
import atexit
import importlib
import logging as pylogging
import os
import re
import sys
import traceback
from collections.abc import Sequence
from typing import Any, Callable, NoReturn

from absl import app, flags, logging
from ml_collections import config_flags

from pretrain.runtime import peer_watchdog
from pretrain.runtime.errors import ConfigError, JobError


TRACEBACK_SWITCH = 'FLAX_PRETRAIN_TRACEBACK'


def print_error(message: str) -> None:
  """`error: message` on stderr; with FLAX_PRETRAIN_TRACEBACK=1, the traceback of the exception being handled
  first (the one-line errors hide it)."""
  if os.environ.get(TRACEBACK_SWITCH, '') not in ('', '0') and sys.exc_info()[0] is not None:
    traceback.print_exc()
  print(f'error: {message}', file=sys.stderr)


def fail(message: str, code: int = 2) -> NoReturn:
  print_error(message)
  sys.exit(code)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the tools: a bad flag prints the usage, then `error: --flag: ...` last, and exits 2."""

  def error(self, message: str) -> NoReturn:
    self.print_usage(sys.stderr)
    fail(re.sub(r'^argument (\S+): ', r'\1: ', message))


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


_unraisable_seen = set()


def _one_line_unraisable(unraisable) -> None:
  """An error in a library's callback after its work failed (Orbax's `Event loop is closed` once a save has
  failed): one warning line per kind instead of a traceback each."""
  text = f'{type(unraisable.exc_value).__name__}: {unraisable.exc_value}'
  if text not in _unraisable_seen:
    _unraisable_seen.add(text)
    logging.warning('ignored in a background callback: %s', text)


def _fail_now(message: str) -> NoReturn:
  """Exit code 1 with `error: message` last: the run has already waited for its saves and closed its logs, and
  the interpreter's shutdown would add the tracebacks of library threads whose work failed with it."""
  atexit._run_exitfuncs()  # pylint: disable=protected-access  # jax.distributed's shutdown, the peer watchdog's
  logging.flush()
  print_error(message)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def run_config_cli(config_example: str, workdir_help: str, run_function: str) -> None:
  """`python -m X --config FILE[:ARG] --workdir DIR [--config.a.b=v ...]`: calls run_function(config, workdir).

  run_function ('module:name') is imported after the flags are parsed, so --help and flag errors stay fast.
  """
  config = config_flags.DEFINE_config_file('config', None, f'Config file, e.g. {config_example}.',
                                           lock_config=True)
  workdir = flags.DEFINE_string('workdir', None, workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])
  coordinator = flags.DEFINE_string('coordinator_address', '', 'Multi-process jobs: HOST:PORT of process 0 '
                                    '(auto-detected on TPU pods and SLURM; give all three flags elsewhere).')
  num_processes = flags.DEFINE_integer('num_processes', None, 'Multi-process jobs: the number of processes.')
  process_id = flags.DEFINE_integer('process_id', None, 'Multi-process jobs: this process, 0..num_processes-1.')
  heartbeat_timeout = flags.DEFINE_integer(
      'heartbeat_timeout_s', peer_watchdog.DEFAULT_TIMEOUT_S, 'Multi-process jobs: a process silent this long '
      '(dead, hung, unreachable) is lost: the others exit with code 1 and one line naming it; restart them all to '
      'resume from the last checkpoint.')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    from pretrain.runtime import distributed  # pylint: disable=g-import-not-at-top  # imports jax
    module, name = run_function.split(':')
    run = getattr(importlib.import_module(module), name)
    from pretrain.runtime.metrics_log import quiet_library_logs  # pylint: disable=g-import-not-at-top
    quiet_library_logs()
    sys.unraisablehook = _one_line_unraisable
    try:
      if distributed.initialize(coordinator.value, num_processes.value, process_id.value,
                                heartbeat_timeout_s=heartbeat_timeout.value):
        distributed.quiet_other_processes()
      run(config.value, workdir.value)
    except ConfigError as e:
      logging.flush()
      fail(str(e))
    except JobError as e:  # the run could not go on: diverged, a failed checkpoint write
      _fail_now(str(e))
    except OSError as e:  # a write to the workdir failed (disk full, ...)
      _fail_now(f'{e.filename or "workdir"}: {e.strerror or e}; the committed checkpoints are intact, rerun to '
                'resume')

  app.run(main, flags_parser=parse_flags)


def tool_main(parse_args: Callable[[Sequence[str] | None], Any], run: Callable[[Any], Any],
              argv: Sequence[str] | None = None) -> int:
  """The main() of an argparse tool: bad flags exit 2 (argparse), a ConfigError is one line `error: ...`, 2."""
  pylogging.basicConfig(level=pylogging.WARNING, format='%(levelname)s %(message)s')
  args = parse_args(argv)
  try:
    run(args)
  except ConfigError as e:
    print_error(str(e))
    return 2
  return 0
