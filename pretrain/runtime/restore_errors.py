"""Why a checkpoint step did not restore: known corruption of its files, or anything else.

Only known corruption lets the Checkpointer set a step aside and resume from an older one: a torn JSON or metadata
file, an array file TensorStore cannot decode (truncated, garbled), a file or item missing from a committed step.
Anything else stops the run with one line and moves nothing, above all trouble that is not the checkpoint's fault
and that a rerun may not meet: an I/O error, a timeout, a stale NFS handle, a permission denied, running out of
memory, a target sharding the arrays cannot be laid out with.

Orbax and TensorStore wrap errors: TensorStore raises ValueError('CODE: ... [os_error_code=\\'5\\']'), which Orbax
re-raises as a bare Exception `from` it; so the whole chain is read, and a sign of trouble anywhere in it wins.
"""
import errno
import json
import os
import re

from pretrain.runtime.errors import JobError

# TensorStore (absl) status codes of data that does not decode or is not there. A message that carries an OS error
# code is trouble whatever its status (older TensorStore releases report EIO as FAILED_PRECONDITION).
_CORRUPT_STATUS = re.compile(r'^(DATA_LOSS|OUT_OF_RANGE|FAILED_PRECONDITION|NOT_FOUND): ')
_TROUBLE_STATUS = re.compile(r'\b(RESOURCE_EXHAUSTED|PERMISSION_DENIED|DEADLINE_EXCEEDED|UNAVAILABLE|ABORTED|'
                             r'CANCELLED|UNAUTHENTICATED)\b')
_TROUBLE_TEXT = re.compile(r'out of memory|Input/output error|Stale file handle|Permission denied|timed out', re.I)
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class RestoreError(JobError):
  """A checkpoint step did not restore for a reason other than known corruption; nothing was moved."""


def known_corruption(e: BaseException) -> bool:
  """True when `e` (with its causes) shows that the checkpoint's files are damaged, and nothing else is wrong."""
  links = _chain(e)
  return not any(map(_trouble, links)) and any(map(_corrupt, links))


def describe(e: BaseException) -> str:
  """One line: the innermost error (Orbax's wrapper says little), after the OS's reason when TensorStore gave one."""
  root = _chain(e)[-1]
  text = f'{type(root).__name__}: {one_line(root)}' if str(root) else type(root).__name__
  code = next(filter(None, map(_os_error_code, _chain(e))), None)
  reason = os.strerror(code) if code else ''
  return f'{reason} ({text})' if reason and reason not in text[:200] else text


def os_reason(e: BaseException) -> str:
  """The operating system's reason when an error (or TensorStore's message) carries one, e.g. 'No space left on
  device'; else the error itself."""
  if isinstance(e, OSError) and e.strerror:
    return e.strerror
  code = _os_error_code(e)
  return os.strerror(code) if code else f'{type(e).__name__}: {one_line(e)}'


def one_line(e: BaseException, limit: int = 300) -> str:
  text = ' '.join(str(e).split())
  return text if len(text) <= limit else text[:limit] + '...'


def _chain(e: BaseException) -> list[BaseException]:
  """e, then its causes and (unless suppressed, as tracebacks do) contexts, and an exception group's members."""
  links, todo = [], [e]
  while todo:
    link = todo.pop(0)
    if link is None or any(link is seen for seen in links):
      continue
    links.append(link)
    context = None if link.__suppress_context__ else link.__context__
    todo += [link.__cause__, context, *getattr(link, 'exceptions', ())]
  return links


def _os_error_code(e: BaseException) -> int | None:
  if isinstance(e, OSError):
    return e.errno
  match = _OS_ERROR_CODE.search(str(e))
  return int(match.group(1)) if match else None


def _trouble(e: BaseException) -> bool:
  if isinstance(e, MemoryError):
    return True
  code = _os_error_code(e)
  if code is not None:
    return code != errno.ENOENT  # a file missing from a committed step is damage; any other OS error is not
  return bool(_TROUBLE_STATUS.search(str(e)) or _TROUBLE_TEXT.search(str(e)))


def _corrupt(e: BaseException) -> bool:
  if isinstance(e, (json.JSONDecodeError, UnicodeDecodeError, FileNotFoundError)):
    return True
  if isinstance(e, KeyError) and 'was not found in the checkpoint' in str(e):  # Orbax: an item is missing
    return True
  return isinstance(e, ValueError) and bool(_CORRUPT_STATUS.match(str(e)))
