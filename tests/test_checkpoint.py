"""orbax checkpoints: what they hold, what is kept, and resume equal to an uninterrupted run."""

import json
import os

import jax
import numpy as np
import pytest
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax.data import task as task_lib
from tlflax.io import checkpoint
from tlflax.train import evaluation
from tlflax.train import run as run_lib

MODEL = config_lib.model_config(name="resnet10", width=4, dtype="float32")
PHASE = config_lib.phase_config("synthetic10", 3, train_split="train[:96]", test_split="test[:24]",
                                image_size=16, batch_size=32, eval_batch_size=16,
                                warmup_epochs=0.5)
# A gradual-unfreezing schedule that changes policy between the checkpoint and the interruption.
TRANSFER = config_lib.transfer_config(freeze="stages:2", unfreeze=((2, "none"),))
CKPT = {"keep": 1, "keep_best": True, "every_epochs": 1, "async_save": True}


@pytest.fixture(scope="module")
def task():
  return task_lib.load_task(PHASE, None, seed=0)


@pytest.fixture(scope="module")
def whole(task, tmp_path_factory):
  """An uninterrupted run: (run folder, result)."""
  run_dir = tmp_path_factory.mktemp("whole")
  return run_dir, _fit(task, run_dir)


class Interrupt(Exception):
  pass


def _fit(task, run_dir):
  return run_lib.fit(run_spec(PHASE, MODEL, transfer=TRANSFER, checkpoint=CKPT, log_every_steps=1),
                   task, str(run_dir))


def _tree_equal(a, b):
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_checkpoints_keep_the_latest_and_the_best(whole):
  run_dir, result = whole
  ckpts = checkpoint.RunCheckpoints(str(run_dir / "checkpoints"))
  steps = ckpts.all_steps()
  best_epoch = max(result.history, key=lambda r: r["test_accuracy"])["epoch"]
  assert set(steps) == {9, best_epoch * 3}
  state, key, data_state = ckpts.restore(9, result.state)
  ckpts.close()
  times = {k: data_state.pop(k) for k in ("wall_s", "train_s", "compile_s", "load_s")}
  assert data_state == {"epoch": 3, "step_in_epoch": 0, "sums": {"loss": 0.0, "accuracy": 0.0,
                                                                 "skipped": 0.0, "loss_scale": 0.0},
                        "steps_per_epoch": 3, "train_examples": 96, "policy": "'none'"}
  assert 0 < times["train_s"] < times["wall_s"] and times["compile_s"] > 0
  assert times["load_s"] == 0.0  # fit called directly: nothing was loaded before it
  assert _tree_equal(state.params, result.state.params)
  assert np.array_equal(jax.random.key_data(key), jax.random.key_data(jax.random.key(0)))
  items = sorted(os.listdir(run_dir / "checkpoints" / "9"))
  assert {"params", "batch_stats", "opt_state", "step", "rng", "data_state"} <= set(items)


def test_the_best_checkpoint_is_chosen_by_validation_accuracy_when_there_is_one(whole,
                                                                                 tmp_path):
  _, result = whole
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "checkpoints"), keep=1, async_save=False)
  for step, metrics in ((1, {"test_accuracy": 0.9, "val_accuracy": 0.1}),
                        (2, {"test_accuracy": 0.1, "val_accuracy": 0.9}),
                        (3, {"test_accuracy": 0.5, "val_accuracy": 0.2})):
    ckpts.save(result.state.replace(step=step), jax.random.key(0), {"epoch": step}, metrics)
  assert ckpts.all_steps() == [2, 3]  # the latest, and the best by val (not 1, best by test)
  ckpts.close()
  test_only = checkpoint.RunCheckpoints(str(tmp_path / "test_only"), keep=1, async_save=False)
  for step, acc in ((1, 0.9), (2, 0.1), (3, 0.5)):
    test_only.save(result.state.replace(step=step), jax.random.key(0), {"epoch": step},
                   {"test_accuracy": acc})
  assert test_only.all_steps() == [1, 3]
  test_only.close()


def test_resume_with_other_data_is_refused(whole):
  run_dir, _ = whole
  other = task_lib.load_task(config_lib.phase_config("synthetic10", 3, train_split="train[:64]",
                                                 test_split="test[:24]", image_size=16), None, 0)
  from tlflax.errors import UserError
  with pytest.raises(UserError, match="was checkpointed with 96 training examples"):
    _fit(other, run_dir)


def test_stop_requests_save_mid_epoch_and_the_resumes_are_exact(task, whole, tmp_path,
                                                              monkeypatch):
  """Stopped after step 3 (epoch 1 trained, not yet evaluated), resumed and stopped again after
  step 7 (inside epoch 3, after the unfreeze changed the optimizer's layout), resumed to the end:
  the same parameters and metrics as the uninterrupted run."""
  from tlflax.errors import Stopped
  from tlflax.train import preemption
  _, whole = whole
  run_dir = tmp_path / "cut"
  for stop_at, position in ((3, (0, 3)), (7, (2, 1))):
    monkeypatch.setattr(preemption, "should_stop", lambda step, at=stop_at: step == at)
    with pytest.raises(Stopped) as stopped:
      _fit(task, run_dir)
    assert stopped.value.exit_code == 143
    assert f"after step {stop_at} " in str(stopped.value)
    ckpts = checkpoint.RunCheckpoints(str(run_dir / "checkpoints"))
    assert ckpts.latest_step() == stop_at
    done = ckpts.data_state(stop_at)
    ckpts.close()
    assert (done["epoch"], done["step_in_epoch"]) == position
  monkeypatch.undo()
  resumed = _fit(task, run_dir)
  assert resumed.summary["resumed_from_step"] == 7
  assert _tree_equal(resumed.state, whole.state)
  lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
  records = [r for r in lines if "event" not in r]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
    assert [r[key] for r in records] == [r[key] for r in whole.history]


def test_evaluation_and_checkpoints_every_2_epochs_resume_exactly(task, whole, tmp_path,
                                                                 monkeypatch):
  _, whole = whole

  def fit(run_dir):
    return run_lib.fit(run_spec(PHASE, MODEL, transfer=TRANSFER,
                              checkpoint={**CKPT, "every_epochs": 2}, eval_every_epochs=2,
                              log_every_steps=1), task, str(run_dir))

  real_evaluate = evaluation.evaluate
  calls = []

  def evaluate_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:  # the last epoch's evaluation: epoch 3 was never checkpointed
      raise Interrupt
    return real_evaluate(*args, **kwargs)

  monkeypatch.setattr(evaluation, "evaluate", evaluate_then_die)
  with pytest.raises(Interrupt):
    fit(tmp_path / "cut")
  monkeypatch.undo()
  assert checkpoint.steps_in(str(tmp_path / "cut" / "checkpoints")) == [6]
  resumed = fit(tmp_path / "cut")
  assert resumed.summary["resumed_from_epoch"] == 2
  assert [r["epoch"] for r in resumed.history] == [2, 3]
  assert [r["test_loss"] for r in resumed.history] == [r["test_loss"] for r in whole.history[1:]]
  assert _tree_equal(resumed.state, whole.state)
  # keep=1 and keep_best: the last checkpoint and the better of the two evaluated ones.
  kept = checkpoint.steps_in(str(tmp_path / "cut" / "checkpoints"))
  acc2, acc3 = whole.history[1]["test_accuracy"], whole.history[2]["test_accuracy"]
  assert kept == ([6, 9] if acc2 > acc3 else [9] if acc3 > acc2 else kept)
  assert 9 in kept and set(kept) <= {6, 9}


# The writes that were in flight when one failed must not end in "Event loop is closed" noise.
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_a_failed_write_is_one_line_naming_the_folder_and_earlier_checkpoints_survive(
    task, tmp_path, monkeypatch):
  """A full disk, simulated by a file-size limit (Python ignores SIGXFSZ, so writes past it fail
  with EFBIG as they would with ENOSPC)."""
  import resource

  from tlflax.errors import UserError
  real_save = checkpoint.RunCheckpoints.save
  limits = resource.getrlimit(resource.RLIMIT_FSIZE)

  def save_on_a_full_disk(self, state, *args, **kwargs):
    if int(state.step) == 6:
      self._mngr.wait_until_finished()  # step 3's async save completes on a disk with room
      resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    return real_save(self, state, *args, **kwargs)

  monkeypatch.setattr(checkpoint.RunCheckpoints, "save", save_on_a_full_disk)
  try:
    with pytest.raises(UserError) as failed:
      _fit(task, tmp_path / "full")
  finally:
    resource.setrlimit(resource.RLIMIT_FSIZE, limits)
  message = str(failed.value)
  assert f"to {tmp_path / 'full' / 'checkpoints'} (File too large" in message
  assert "free space there" in message and "\n" not in message
  assert checkpoint.steps_in(str(tmp_path / "full" / "checkpoints")) == [3]
  monkeypatch.undo()
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "full" / "checkpoints"))
  assert ckpts.data_state(3)["epoch"] == 1
  ckpts.close()
  variables, name = checkpoint.restore_variables(str(tmp_path / "full"))
  assert name.endswith("/checkpoints/3") and jax.tree.leaves(variables["params"])
