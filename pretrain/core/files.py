"""Writing files so that a crash or a kill never leaves a half-written one."""
import os
import pathlib


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
