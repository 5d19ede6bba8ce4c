"""Big models on one device: gradient accumulation (optax.MultiSteps) and float16 compute with
dynamic loss scaling (flax's DynamicScale)."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax.data import task as task_lib
from tlflax.errors import Stopped
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import optim, preemption, spec, steps
from tlflax.train import run as run_lib

MODEL = config_lib.model_config(name="resnet10", width=4, dtype="float32")


def _variables():
  return resnet.init_variables(MODEL, 10, (16, 16, 3), 0)


def _batches(n=64, seed=1):
  kx, ky = jax.random.split(jax.random.key(seed))
  return jax.random.normal(kx, (n, 16, 16, 3)), jax.random.randint(ky, (n,), 0, 10)


def _train(batch, k, policy, updates=4, **transfer):
  """`updates` optimizer updates of `batch * k` examples each, as `k` steps of `batch`, over the
  same 64 examples in the same order; returns the final state and the initial variables."""
  phase = config_lib.phase_config("synthetic10", 2, learning_rate=0.1, weight_decay=0.05,
                                  warmup_epochs=0.5, batch_size=batch, accumulate_steps=k)
  run = run_spec(phase, MODEL, transfer=config_lib.transfer_config(**transfer))
  schedule = optim.learning_rate_schedule(phase, 2, 64 // batch)
  variables = _variables()
  setup = optim.policy_setup(policy, run, schedule, 10, variables["params"])
  state = steps.create_train_state(setup.tx, variables)
  step = jax.jit(functools.partial(steps.train_step, model=setup.model, tx=setup.tx))
  images, labels = _batches()
  for i in range(updates * k):
    j = (i * batch) % 64
    state, _ = step(state, {"image": images[j:j + batch], "label": labels[j:j + batch]})
  return state, variables


def _max_diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                           jax.tree.leaves(b)))


def test_accumulating_4_batches_of_8_equals_batches_of_32_where_batchnorm_uses_running_stats():
  """A frozen backbone whose BatchNorms run on their running averages (the head trains): the
  gradients of a batch of 32 are the mean of those of its four quarters, so 4 updates agree to
  float tolerance, weight decay, momentum and the warm-up schedule included."""
  frozen = {"freeze": "backbone", "cache_features": "off"}
  big, before = _train(32, 1, "backbone", **frozen)
  small, _ = _train(8, 4, "backbone", **frozen)
  assert _max_diff(big.params, small.params) < 1e-6
  assert _max_diff(big.params["head"], before["params"]["head"]) > 1e-2  # it did train
  assert int(small.step) == 16 and int(big.step) == 4  # steps count batches


def test_with_batchnorm_in_training_each_accumulated_batch_uses_its_own_statistics():
  """Every layer training: the quarters normalise with their own batch statistics, so the
  result differs from the batch of 32 (what docs/scaling.md states), though both train."""
  big, before = _train(32, 1, "none")
  small, _ = _train(8, 4, "none")
  assert _max_diff(big.params, small.params) > 1e-4
  assert _max_diff(small.params, before["params"]) > 1e-2


def test_the_schedule_counts_updates_and_a_step_reports_the_rate_of_its_update():
  phase = config_lib.phase_config("synthetic10", 2, learning_rate=0.4, warmup_epochs=1.0,
                                  batch_size=8, accumulate_steps=4, train_split="x")
  plan = spec.Plan.create(run_spec(phase, MODEL), 64, _OneDevice())
  assert plan.steps_per_epoch == 8  # batches of 8
  # 16 steps are 4 updates; the warm-up is the first epoch's 2 updates.
  assert float(plan.schedule(2)) == pytest.approx(0.4)
  assert [plan.learning_rate(s) for s in (1, 4, 5, 8, 9)] == pytest.approx(
      [0.0, 0.0, 0.2, 0.2, 0.4])
  assert float(plan.schedule(4)) == pytest.approx(0.0, abs=1e-7)


class _OneDevice:
  def check_batch(self, batch, name):
    pass


def _scaled_state(model, tx, scale):
  variables = resnet.init_model(model, jax.random.key(0), (16, 16, 3))
  state = steps.create_train_state(tx, variables, loss_scaling=True)
  return state.replace(loss_scale=state.loss_scale.replace(scale=jnp.float32(scale)))


def test_float16_loss_scaling_skips_overflowing_steps_backs_off_recovers_and_learns():
  model = resnet.create_model("resnet10", 10, width=4, dtype="float16")
  tx = optax.sgd(0.05, momentum=0.9)
  state = _scaled_state(model, tx, 2.0 ** 40)  # float16 gradients overflow at this scale
  state = state.replace(loss_scale=state.loss_scale.replace(growth_interval=3))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
  images, labels = _batches(32)
  batch = {"image": images, "label": labels}
  start, log = state, []
  for _ in range(30):
    before = state
    state, metrics = step(state, batch)
    log.append({k: float(metrics[k]) for k in ("loss", "skipped", "loss_scale")})
    if metrics["skipped"]:  # a skipped step changes nothing but the scale and the step
      assert _max_diff(state.params, before.params) == 0.0
      assert _max_diff(state.batch_stats, before.batch_stats) == 0.0
      assert float(state.loss_scale.scale) == float(before.loss_scale.scale) / 2
    assert bool(metrics["finite"])  # a skip is not divergence while the scale is above 1
  skipped = [r["skipped"] for r in log]
  first_good = skipped.index(0.0)
  assert first_good > 5 and sum(skipped) == first_good  # backed off, then no more overflow
  scales = [r["loss_scale"] for r in log]
  assert scales[first_good + 4] == 2 * scales[first_good]  # grows after 3 finite steps
  assert log[-1]["loss"] < 0.5 * log[first_good]["loss"]  # and it learns
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((state.params, state.opt_state)))
  assert _max_diff(state.params, start.params) > 1e-2


def test_a_nonfinite_step_at_the_lowest_scale_is_divergence():
  model = resnet.create_model("resnet10", 10, width=4, dtype="float16")
  tx = optax.sgd(0.05)
  state = _scaled_state(model, tx, 1.0)
  images, labels = _batches(8)
  _, metrics = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))(
      state, {"image": images.at[0, 0, 0, 0].set(jnp.inf), "label": labels})
  assert float(metrics["skipped"]) == 1.0 and not bool(metrics["finite"])


FP16 = config_lib.model_config(name="resnet10", width=4, dtype="float16")
PHASE = config_lib.phase_config("synthetic10", 2, train_split="train[:64]", test_split="test[:24]",
                                image_size=16, batch_size=16, eval_batch_size=24,
                                warmup_epochs=0.5, accumulate_steps=2)


def _fit(task, run_dir):
  return run_lib.fit(run_spec(PHASE, FP16, log_every_steps=1,
                            checkpoint={"keep": 1, "keep_best": False}), task, str(run_dir))


def test_a_float16_run_with_accumulation_records_its_scale_and_resumes_exactly(tmp_path,
                                                                               monkeypatch):
  """Stopped after step 3, halfway through an accumulated update, and resumed: the same
  parameters, optimizer state, loss scale and metrics as the run that was not stopped; the
  checkpoints keep float32 parameters and the scale."""
  task = task_lib.load_task(PHASE, None, seed=0)
  whole = _fit(task, tmp_path / "whole")
  assert [r["epoch"] for r in whole.history] == [1, 2]
  for record in whole.history:
    assert record["skipped_steps"] == 0 and record["loss_scale"] == steps.LOSS_SCALE_INIT
  windows = [json.loads(x) for x in (tmp_path / "whole" / "train_steps.jsonl").read_text()
             .splitlines()]
  assert len(windows) == 8 and all(w["loss_scale"] == steps.LOSS_SCALE_INIT for w in windows)
  assert whole.summary["dtype"] == "float16"
  restored, _ = checkpoint.restore_variables(str(tmp_path / "whole"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(restored))

  monkeypatch.setattr(preemption, "should_stop", lambda step: step == 3)
  with pytest.raises(Stopped):
    _fit(task, tmp_path / "cut")
  monkeypatch.undo()
  resumed = _fit(task, tmp_path / "cut")
  assert resumed.summary["resumed_from_step"] == 3
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
    assert np.array_equal(np.asarray(a), np.asarray(b))
  assert float(resumed.state.loss_scale.scale) == steps.LOSS_SCALE_INIT
  for key in ("train_loss", "test_loss", "test_accuracy", "learning_rate"):
    assert [r[key] for r in resumed.history] == [r[key] for r in whole.history]


def test_skipped_float16_steps_add_nothing_to_the_epoch_sums():
  """Steps at a scale that overflows are skipped: the epoch's sums hold only the other steps'
  loss and accuracy, and their mean divides by those steps alone."""
  model = resnet.create_model("resnet10", 10, width=4, dtype="float16")
  tx = optax.sgd(0.05, momentum=0.9)
  state = _scaled_state(model, tx, 2.0 ** 22)
  images, labels = _batches(32)
  batch = {"image": images, "label": labels}
  raw = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
  summed = jax.jit(functools.partial(
      steps.accumulating(lambda s, data, rows, **kw: steps.train_step(s, data, **kw)),
      model=model, tx=tx))
  a, b, sums, seen = state, state, steps.zero_metrics(), []
  for _ in range(12):
    a, metrics = raw(a, batch)
    b, sums = summed(b, sums, batch, None)
    seen.append({k: float(metrics[k]) for k in ("loss", "accuracy", "skipped")})
  kept = [r for r in seen if not r["skipped"]]
  assert 0 < len(kept) < len(seen)  # some steps skipped, some counted
  assert float(sums["skipped"]) == len(seen) - len(kept)
  assert float(sums["loss"]) == pytest.approx(sum(r["loss"] for r in kept), rel=1e-5)
  assert float(sums["accuracy"]) == pytest.approx(sum(r["accuracy"] for r in kept), rel=1e-5)
  mean = steps.mean_of(sums["loss"], len(seen), sums["skipped"])
  assert mean == pytest.approx(np.mean([r["loss"] for r in kept]), rel=1e-5)
  assert np.isnan(steps.mean_of(0.0, 3, 3.0))  # nothing counted: no number


def test_a_float16_run_that_skips_steps_records_finite_means_and_the_scale_after_them(
    tmp_path, monkeypatch):
  monkeypatch.setattr(steps, "LOSS_SCALE_INIT", 2.0 ** 18)  # the first steps overflow
  task = task_lib.load_task(PHASE, None, seed=0)
  result = _fit(task, tmp_path / "run")
  windows = [json.loads(x) for x in (tmp_path / "run" / "train_steps.jsonl").read_text()
             .splitlines()]
  spe = len(windows) // 2  # log_every_steps=1: a window a step
  first = result.history[0]
  counted = [w["train_loss"] for w in windows[:spe] if w["skipped_steps"] == 0]
  assert first["skipped_steps"] == spe - len(counted) > 0 and counted
  assert first["train_loss"] == pytest.approx(np.mean(counted), rel=1e-5)
  assert all(np.isnan(w["train_loss"]) for w in windows[:spe] if w["skipped_steps"])
  # loss_scale: the scale after the epoch's last step, the one the next step starts with
  assert first["loss_scale"] == windows[spe - 1]["loss_scale"]
  assert float(result.state.loss_scale.scale) == result.history[-1]["loss_scale"]


def test_every_step_window_says_which_steps_it_averages_across_a_resume(tmp_path, monkeypatch):
  """log_every_steps=3 over 4 steps an epoch; stopped after step 2 and resumed: the resumed
  run's window ending at step 3 averages step 3 alone, and says so."""
  task = task_lib.load_task(PHASE, None, seed=0)

  def fit(run_dir):
    return run_lib.fit(run_spec(PHASE, FP16, log_every_steps=3, checkpoint={"keep": 1}), task,
                       str(run_dir))

  def windows(run_dir):
    return [json.loads(x) for x in (run_dir / "train_steps.jsonl").read_text().splitlines()]

  fit(tmp_path / "whole")
  monkeypatch.setattr(preemption, "should_stop", lambda step: step == 2)
  with pytest.raises(Stopped):
    fit(tmp_path / "cut")
  monkeypatch.undo()
  fit(tmp_path / "cut")
  whole = [(w["first_step"], w["step"], w["steps"]) for w in windows(tmp_path / "whole")]
  assert whole == [(1, 3, 3), (4, 4, 1), (5, 7, 3), (8, 8, 1)]
  cut = [(w["first_step"], w["step"], w["steps"]) for w in windows(tmp_path / "cut")]
  assert cut == [(3, 3, 1), (4, 4, 1), (5, 7, 3), (8, 8, 1)]


@pytest.mark.parametrize("train,k", [(48, 2), (80, 4)])
def test_accumulation_performs_every_update_its_schedule_counts(tmp_path, train, k):
  """3 epochs of train/16 steps, accumulating k: the last update takes the steps that are left
  (here fewer than k), so the run applies ceil(steps / k) updates, and the schedule ends at 0."""
  phase = config_lib.phase_config("synthetic10", 3, train_split=f"train[:{train}]",
                                  test_split="test[:16]", image_size=16, batch_size=16,
                                  eval_batch_size=16, warmup_epochs=0.5, accumulate_steps=k)
  model = config_lib.model_config(name="resnet10", width=4, dtype="float32")
  task = task_lib.load_task(phase, None, seed=0)
  result = run_lib.fit(run_spec(phase, model, checkpoint={"keep": 1}), task, str(tmp_path))
  total = 3 * (train // 16)
  assert total % k  # the last group is a partial one
  updates = -(-total // k)
  plan = spec.Plan.create(run_spec(phase, model), train, _OneDevice())
  assert int(result.state.opt_state.gradient_step) == updates
  assert int(result.state.opt_state.mini_step) == 0  # nothing left accumulated
  assert float(plan.schedule(updates)) == pytest.approx(0.0, abs=1e-9)
  assert float(plan.schedule(updates - 1)) > 0  # the last update still moved the weights
  assert result.history[-1]["learning_rate"] == pytest.approx(float(plan.schedule(updates - 1)))
