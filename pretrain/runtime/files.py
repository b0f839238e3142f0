"""Writing files and directories so that a crash or a kill never leaves a half-written one."""
import contextlib
import os
import pathlib
import shutil
import tempfile
from collections.abc import Iterator

from pretrain.runtime.errors import ConfigError


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
  """Writes data to a temporary file beside path, flushed to disk, then renames it into place and flushes the
  directory: after a crash or power loss `path` holds the old contents or the new, never a torn or empty file."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'{path.name}.tmp.{os.getpid()}')
  with open(tmp, 'wb') as f:
    f.write(data if isinstance(data, bytes) else data.encode('utf-8'))
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  fsync_directory(path.parent)


def fsync_directory(path: str | os.PathLike) -> None:
  """Makes a rename or a new file in directory `path` durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(path, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some filesystems (e.g. some FUSE mounts) refuse fsync on a directory
    pass
  finally:
    os.close(fd)


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
