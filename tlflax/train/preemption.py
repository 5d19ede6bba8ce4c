"""Stopping a run cleanly on SIGTERM and SIGINT (TPU preemption, SLURM's time limit, Ctrl-C).

The CLI calls `install()`. A first SIGTERM or SIGINT only records the request; the training loop
asks `should_stop(step)` after every step, saves a checkpoint of that step (with its position in
the epoch) and raises `errors.Stopped` with exit code 128 + the signal's number (143, 130).
A second SIGINT interrupts at once (KeyboardInterrupt, exit 130), keeping the checkpoints written
so far.

With several processes, every process must stop after the same step, or their checkpoints
disagree: there SIGTERM goes to jax's preemption sync manager (started by
`jax.distributed.initialize`), `should_stop` is true on every process at the step they agreed on,
and SIGINT interrupts at once.
"""

import signal

from jax.experimental import multihost_utils

_requested: int | None = None  # the signal's number once one arrived
_multiprocess = False


def _handler(signum, frame) -> None:
  global _requested
  del frame
  if _requested == signal.SIGINT and signum == signal.SIGINT:
    raise KeyboardInterrupt  # a second Ctrl-C: stop now
  _requested = _requested or signum


def install(num_processes: int = 1) -> None:
  """Routes SIGTERM and SIGINT to a stop request. With several processes SIGTERM belongs to
  jax's preemption sync manager, and SIGINT keeps Python's default (KeyboardInterrupt)."""
  global _multiprocess
  _multiprocess = num_processes > 1
  if not _multiprocess:
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def uninstall() -> None:
  """Back to Python's default handlers (tests, library use after a CLI run)."""
  global _requested
  signal.signal(signal.SIGINT, signal.default_int_handler)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)
  _requested = None


def request(signum: int = signal.SIGTERM) -> None:
  """Asks the running loop to stop after its current step, as the signal `signum` would."""
  global _requested
  _requested = _requested or signum


def should_stop(step: int) -> bool:
  """Whether the loop stops after global step `step` (every process gets the same answer)."""
  if _multiprocess:
    if multihost_utils.reached_preemption_sync_point(step):
      request(signal.SIGTERM)
      return True
    return False
  return _requested is not None


def signal_name() -> str:
  return signal.Signals(_requested).name if _requested else "a stop request"


def exit_code() -> int:
  """128 + the signal's number, as a shell reports a process the signal ended."""
  return 128 + int(_requested or signal.SIGTERM)
