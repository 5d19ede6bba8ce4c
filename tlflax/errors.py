"""The one exception type for mistakes a user can fix (bad flag, missing data, ...)."""


class UserError(Exception):
  """A problem the user caused and can fix; the CLI prints it as one line and exits 2.

  The message names the problem and the fix, e.g.
  "batch_size 256 exceeds the 100 training examples of synthetic10: lower --config.target.batch_size".
  """


def require(condition: bool, message: str) -> None:
  """Raises `UserError(message)` unless `condition` holds."""
  if not condition:
    raise UserError(message)
