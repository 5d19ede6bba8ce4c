"""Faults lose nothing: SIGTERM, kill -9 (also during a save), a corrupt latest checkpoint and a
diverging run, each in a real CLI process, resumed and compared bitwise with an uninterrupted run
of the same config. (SIGINT takes the same path with exit code 130: test_preemption.py.)"""

import json
import shutil
import signal

import pytest
from conftest import TINY_ARGS, TINY_STEPS, run_cli, start_and_signal

STEPS = TINY_STEPS
ARGS = TINY_ARGS
EXACT = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _records(workdir):
  lines = (workdir / "scratch" / "metrics.jsonl").read_text().splitlines()
  return [json.loads(x) for x in lines]


def _exact(records):
  return [{k: r[k] for k in EXACT} for r in records if "event" not in r]


@pytest.fixture(scope="module")
def reference(tiny_scratch):
  return _exact(_records(tiny_scratch[0]))


def _start_and_signal(workdir, sig, when: str, extra=()):
  """Starts the run, sends `sig` once stderr shows `when`; returns (exit code, stderr)."""
  return start_and_signal([*ARGS, f"--workdir={workdir}", *extra],
                          workdir.parent / f"{workdir.name}.log", when, sig)


def _one_line(stderr, prefix="tlflax:"):
  lines = [x for x in stderr.splitlines() if x.startswith(prefix)]
  assert len(lines) == 1, stderr[-3000:]
  return lines[0]


def _resume(workdir, extra=()):
  result = run_cli(ARGS + [f"--workdir={workdir}", *extra], workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stderr


def test_sigterm_saves_the_step_and_the_resumed_run_equals_an_uninterrupted_one(reference,
                                                                                 tmp_path):
  workdir = tmp_path / "w"
  code, stderr = _start_and_signal(workdir, signal.SIGTERM, f"epoch 2/2 step 4/{STEPS}")
  assert code == 143, stderr[-3000:]
  line = _one_line(stderr)
  assert line.startswith("tlflax: interrupted by SIGTERM after step ") and "rerun the same" in line
  step = int(line.split("after step ")[1].split()[0])
  assert STEPS + 4 <= step < 2 * STEPS  # inside epoch 2
  ckpt_dir = workdir / "scratch" / "checkpoints"
  assert f"saved {ckpt_dir}/{step}" in line
  assert sorted(int(p.name) for p in ckpt_dir.iterdir()) == [STEPS, step]
  assert not (workdir / "scratch" / "summary.json").exists()
  assert _records(workdir)[-1] == {"event": "interrupted", "signal": "SIGTERM", "step": step,
                                   "epoch": 2, "step_in_epoch": step - STEPS}
  shutil.copytree(workdir, tmp_path / "copy")

  stderr = _resume(workdir)
  assert (f"resuming from {ckpt_dir}/{step} in epoch 2, after {step - STEPS} of its {STEPS} "
          "steps") in stderr
  assert _exact(_records(workdir)) == reference  # bitwise: losses and accuracies as floats
  summary = json.loads((workdir / "scratch" / "summary.json").read_text())
  assert summary["resumed_from_step"] == step
  # Time is counted across both attempts: the first one alone took longer than its training.
  assert summary["wall_s"] > summary["train_s"] + summary["compile_s"] > 0
  from test_main import _event_scalars
  tb = _event_scalars(workdir / "scratch", "test_loss")
  assert [s for s, _ in tb] == [STEPS, 2 * STEPS]  # no duplicate points after the resume

  # The same interrupted run, its latest checkpoint truncated on disk: back to the one before.
  workdir = tmp_path / "copy"
  ckpt_dir = workdir / "scratch" / "checkpoints"
  for path in (ckpt_dir / str(step) / "params").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.write_bytes(path.read_bytes()[:10])
  stderr = _resume(workdir)
  assert f"checkpoint {ckpt_dir}/{step} cannot be restored" in stderr
  assert f"resuming from {ckpt_dir}/{STEPS} at the start of epoch 2" in stderr
  assert (workdir / "scratch" / "corrupt_checkpoints" / str(step) / "params").is_dir()
  assert _exact(_records(workdir)) == reference


def test_a_streamed_run_stopped_mid_epoch_resumes_exactly_like_the_device_path(tiny_scratch,
                                                                              reference, tmp_path):
  """Batches streamed from host memory (forced) are the device path's batches: SIGTERM in epoch
  2, resumed streaming, and the metrics and every training window equal the uninterrupted
  device-path run's, bitwise."""
  workdir, stream = tmp_path / "w", ["--config.data.pipeline=stream"]
  code, stderr = _start_and_signal(workdir, signal.SIGTERM, f"epoch 2/2 step 5/{STEPS}", stream)
  assert code == 143, stderr[-3000:]
  assert "streaming batches from host memory (data.pipeline='stream')" in stderr
  stderr = _resume(workdir, stream)
  assert "resuming from" in stderr and "in epoch 2, after" in stderr
  assert _exact(_records(workdir)) == reference
  from tlflax.train import monitor
  windows = monitor.read_steps(str(workdir / "scratch"))
  want = monitor.read_steps(str(tiny_scratch[0] / "scratch"))
  assert [w["step"] for w in windows] == list(range(1, 2 * STEPS + 1))  # every step, once
  assert [w["train_loss"] for w in windows] == [w["train_loss"] for w in want]
  summary = json.loads((workdir / "scratch" / "summary.json").read_text())
  assert summary["pipeline"] == "stream"


def test_kill_9_during_saves_resumes_from_the_last_complete_checkpoint(reference, tmp_path):
  workdir = tmp_path / "w"
  # A checkpoint after every step: the kill most likely lands inside an async save.
  code, _ = _start_and_signal(workdir, signal.SIGKILL, f"epoch 1/2 step 12/{STEPS}",
                              ["--config.checkpoint.every_steps=1"])
  assert code == -signal.SIGKILL
  ckpt_dir = workdir / "scratch" / "checkpoints"
  complete = [int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()]
  assert complete  # some saves completed before the kill, later ones may not have
  run_cli(ARGS + [f"--workdir={workdir}"], workdir)  # saving less often changes no result
  assert _exact(_records(workdir)) == reference
  assert not [p for p in ckpt_dir.iterdir() if not p.name.isdigit()]  # temporaries cleaned up


def test_a_diverging_run_stops_with_exit_3_and_saves_no_nan(tmp_path):
  workdir = tmp_path / "w"
  result = run_cli(ARGS + [f"--workdir={workdir}", "--config.target.learning_rate=1e9",
                           "--config.checkpoint.every_steps=2"], workdir)
  assert result.returncode == 3, result.stderr[-3000:]
  line = _one_line(result.stderr)
  assert line.startswith("tlflax: error: diverged: non-finite loss or gradients at step ")
  step = int(line.split("at step ")[1].split()[0])
  event = _records(workdir)[-1]
  assert event["event"] == "diverged" and event["step"] == step and event["epoch"] == 1
  ckpt_dir = workdir / "scratch" / "checkpoints"
  saved = sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit())
  assert all(s < step for s in saved)  # nothing at or after the diverged step
  if saved:
    assert f"last good checkpoint: {ckpt_dir}/{saved[-1]}" in line
    import jax
    import numpy as np

    from tlflax.io import checkpoint
    params, _ = checkpoint.restore_variables(str(ckpt_dir / str(saved[-1])))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
  shutil.rmtree(workdir)
