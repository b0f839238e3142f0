"""The one error type for bad user input: its message names the field, file or flag at fault."""


class ConfigError(ValueError):
  """A setting, file or input that cannot work; raised before any compilation."""


def require(condition: bool, message: str) -> None:
  """Raises ConfigError(message) unless condition holds."""
  if not condition:
    raise ConfigError(message)


def first_line(e: BaseException) -> str:
  """The first line of an exception's message (its type name when it has none)."""
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


class JobError(RuntimeError):
  """A run that cannot go on (training diverged, a checkpoint write failed): one line, exit code 1."""
