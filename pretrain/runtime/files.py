"""Writing files and directories so that a crash or a kill never leaves a half-written one."""
import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from pretrain.runtime.errors import ConfigError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes data to a temporary file beside path, then renames it into place."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.tmp.{os.getpid()}')
  if isinstance(data, bytes):
    tmp.write_bytes(data)
  else:
    tmp.write_text(data, encoding='utf-8')
  os.replace(tmp, path)


def check_output_dir(path: str | os.PathLike, field: str = '--out') -> pathlib.Path:
  """`path` (absolute) if it does not exist or is an empty directory; else an error naming `field`."""
  path = pathlib.Path(path).absolute()
  if path.exists() and not (path.is_dir() and not any(path.iterdir())):
    raise ConfigError(f'{field}: {path} exists and is not empty; choose a new directory')
  return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, field: str = '--out') -> Iterator[pathlib.Path]:
  """Yields a temporary directory beside `path` that becomes `path` when the block completes.

  `path` must not exist or be an empty directory (an error naming `field` otherwise, before any work); on an
  exception or a kill the temporary directory is removed (or, after a kill, left under a hidden name), so
  `path` only ever appears complete.
  """
  path = check_output_dir(path, field)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{path.name}.', dir=path.parent))
  try:
    yield tmp
    if path.exists():
      path.rmdir()
    os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def check_writable_dir(path: str | os.PathLike, field: str = '--workdir') -> pathlib.Path:
  """`path` (absolute), created if needed, once a file could be written in it; else an error naming `field`."""
  path = pathlib.Path(path).absolute()
  try:
    path.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path, prefix='.write-test.'):
      pass
  except OSError as e:
    raise ConfigError(f'{field}: {path} is not a writable directory ({e.strerror or e})') from None
  return path
