"""The one exception type for mistakes a user can fix (bad flag, missing data, ...)."""

import contextlib


class UserError(Exception):
  """A problem the user caused and can fix; the CLI prints it as one line and exits 2.

  The message names the problem and the fix, e.g.
  "batch_size 256 exceeds the 100 training examples of synthetic10: lower --config.target.batch_size".
  """


class SplitError(UserError):
  """A split string that does not parse, or selects no example (the caller may name its key)."""


def require(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)


@contextlib.contextmanager
def within(where: str | None, only: type[UserError] = UserError):
  """A `UserError` (of type `only`) raised inside says where: 'in WHERE: ...' (`where` None:
  unchanged)."""
  try:
    yield
  except only as e:
    if where is None:
      raise
    raise UserError(f"in {where}: {e}") from e


class Stopped(Exception):
  """A run that stopped before its end on purpose, with what to tell the user and the exit code:
  interrupted by a signal (130 for SIGINT, 143 for SIGTERM; a checkpoint of the last step is on
  disk) or diverged (3; non-finite loss or gradients, no checkpoint of them saved)."""

  def __init__(self, message: str, exit_code: int):
    super().__init__(message)
    self.exit_code = exit_code


DIVERGED = 3
