"""Signals become a stop request the loop sees after its current step."""

import os
import signal

import pytest

from tlflax.train import preemption


@pytest.fixture
def installed():
  preemption.install(num_processes=1)
  yield
  preemption.uninstall()


def test_sigint_then_a_second_sigint(installed):
  assert not preemption.should_stop(1)
  os.kill(os.getpid(), signal.SIGINT)  # Python runs the handler before the next bytecode
  assert preemption.should_stop(2)
  assert preemption.signal_name() == "SIGINT" and preemption.exit_code() == 130
  with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
    os.kill(os.getpid(), signal.SIGINT)


def test_sigterm_is_a_stop_request_with_exit_143(installed):
  os.kill(os.getpid(), signal.SIGTERM)
  assert preemption.should_stop(1)
  assert preemption.signal_name() == "SIGTERM" and preemption.exit_code() == 143
  os.kill(os.getpid(), signal.SIGINT)  # the first signal decides the exit code
  assert preemption.exit_code() == 143


def test_without_install_nothing_stops():
  preemption.uninstall()
  assert not preemption.should_stop(5)
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
