"""Train and eval steps: learning, exact evaluation, determinism, mixed precision."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax import parallel
from tlflax.config import phase_config
from tlflax.data import batches
from tlflax.data import task as task_lib
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import evaluation, optim, steps
from tlflax.train import run as run_lib

MODEL = config_lib.model_config(name="resnet18", width=4, dtype="float32")


def _task(n_train=256, n_test=37, size=16):
  phase = phase_config("synthetic10", 1, train_split=f"train[:{n_train}]",
                       test_split=f"test[:{n_test}]", image_size=size)
  return task_lib.load_task(phase, None, seed=0)


def _phase(**kw):
  base = {"batch_size": 32, "eval_batch_size": 16, "learning_rate": 0.05, "warmup_epochs": 0.0,
          "train_split": "unused", "test_split": "unused"}
  return phase_config("synthetic10", **{"epochs": 2, **base, **kw})


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_few_steps_lower_the_loss(dtype):
  task = _task()
  model = resnet.create_model("resnet18", 10, width=4, dtype=dtype)
  tx = optax.sgd(0.05, momentum=0.9)
  state = steps.create_train_state(
      tx, resnet.init_model(model, jax.random.key(0), task.train.images.shape[1:]))
  step = jax.jit(functools.partial(steps.train_step, model=model, tx=tx))
  batch = {"image": batches.normalize(jnp.asarray(task.train.images[:64]), task.mean, task.std),
           "label": jnp.asarray(task.train.labels[:64])}
  losses = []
  for _ in range(8):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert int(state.step) == 8
  assert losses[-1] < 0.7 * losses[0], losses
  assert metrics["loss"].dtype == jnp.float32  # the loss stays float32 in bfloat16 compute


def test_evaluation_counts_every_example_once_and_matches_a_direct_computation():
  task = _task(n_test=37)
  model = resnet.create_model("resnet18", 10, width=4)
  state = steps.create_train_state(
      optax.sgd(0.1), resnet.init_model(model, jax.random.key(0), task.train.images.shape[1:]))
  place = parallel.Placement.create()
  padded = batches.pad_for_eval(task.test, 16)
  test_data = place.replicate(batches.device_data(padded, task.mean, task.std))
  rows = place.rows(np.arange(48, dtype=np.int32).reshape(3, 16))
  eval_fn = place.spmd(functools.partial(steps.eval_step_on_data, model=model), 4, split=(2,))
  result = evaluation.evaluate(eval_fn, state, {"test": (0, 3)},
                          lambda lo, hi: ((test_data, rows, i) for i in range(lo, hi)))
  assert result["test_count"] == 37
  images = batches.normalize(jnp.asarray(task.test.images), task.mean, task.std)
  logits = model.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
  labels = jnp.asarray(task.test.labels)
  loss = float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels)))
  acc = float(jnp.mean(jnp.argmax(logits, -1) == labels))
  top5 = float(jnp.mean(jnp.any(jnp.argsort(logits, -1)[:, -5:] == labels[:, None], -1)))
  assert result["test_loss"] == pytest.approx(loss, rel=1e-5)
  assert result["test_accuracy"] == pytest.approx(acc)
  assert result["test_top5"] == pytest.approx(top5)


def _fit(tmp_path, seed, name):
  task = _task(n_train=128, n_test=20)
  return run_lib.fit(run_spec(_phase(), MODEL, seed=seed, log_every_steps=2), task,
                   str(tmp_path / name))


def test_fit_is_deterministic_for_a_seed_and_writes_metrics(tmp_path):
  a = _fit(tmp_path, 0, "a")
  b = _fit(tmp_path, 0, "b")
  c = _fit(tmp_path, 1, "c")
  same = jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a.state.params, b.state.params)
  assert all(jax.tree.leaves(same))
  assert all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)),
                                          a.state.batch_stats, b.state.batch_stats)))
  assert not jnp.array_equal(a.state.params["head"]["kernel"], c.state.params["head"]["kernel"])
  assert [r["epoch"] for r in a.history] == [1, 2]
  assert a.history[-1]["step"] == 2 * (128 // 32) == int(a.state.step)
  for key in ("train_loss", "test_loss", "test_accuracy", "test_top5", "wall_s", "img_per_s"):
    assert np.isfinite(a.history[-1][key])
  assert a.history[-1]["test_count"] == 20
  # The schedule ends at zero: the last recorded learning rate is the cosine's tail.
  assert a.history[-1]["learning_rate"] < 0.05 * 0.2


def test_learning_rate_schedule_warms_up_then_decays_to_zero():
  sched = optim.learning_rate_schedule(_phase(warmup_epochs=2, learning_rate=0.4), 10, 5)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(0.4)
  assert float(sched(5)) == pytest.approx(0.2)
  assert float(sched(50)) == pytest.approx(0.0, abs=1e-7)
  assert float(sched(30)) < float(sched(20)) < 0.4


def test_weight_decay_is_added_to_the_gradient():
  params = {"w": jnp.array([2.0])}
  phase = _phase(momentum=0.0, weight_decay=0.5, learning_rate=1.0, warmup_epochs=0.0)
  tx = optim.make_optimizer(phase, optim.learning_rate_schedule(phase, 3, 1))
  updates, _ = tx.update({"w": jnp.array([0.0])}, tx.init(params), params)
  assert float(updates["w"][0]) == pytest.approx(-1.0)  # -lr * wd * w at step 0


def test_a_bfloat16_run_keeps_float32_params_statistics_optimizer_state_and_checkpoints(tmp_path):
  task = _task(n_train=64, n_test=20)
  bf16 = config_lib.model_config(name="resnet18", width=4, dtype="bfloat16")
  result = run_lib.fit(run_spec(_phase(epochs=1), bf16, log_every_steps=4), task,
                     str(tmp_path / "bf16"))
  assert result.summary["dtype"] == "bfloat16"
  assert all(np.isfinite(r[k]) for r in result.history for k in ("train_loss", "test_loss"))
  state = result.state
  floats = [x for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)
  restored, _ = checkpoint.restore_variables(str(tmp_path / "bf16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(restored))


def test_nesterov_momentum_matches_a_hand_computed_update():
  """PyTorch's SGD(nesterov=True, dampening=0): b = mu b + g; step = -lr (g + mu b)."""
  phase = _phase(momentum=0.9, weight_decay=0.0, learning_rate=0.5, warmup_epochs=1.0)
  lr = optim.learning_rate_schedule(phase, 4, 2)
  tx = optim.make_optimizer(phase, lr)
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  buf = np.zeros(2)
  for t, g in enumerate([np.array([0.3, -0.1]), np.array([0.2, 0.4]), np.array([-0.5, 0.1])]):
    updates, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    buf = 0.9 * buf + g
    expected = -float(lr(t)) * (g + 0.9 * buf)
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-6, atol=1e-8)
    params = {"w": params["w"] + updates["w"]}
  assert float(lr(0)) == 0.0 and float(lr(1)) == pytest.approx(0.25)  # warm-up over 2 steps


def test_label_smoothing_spreads_the_target_over_every_class():
  logits = jnp.array([[2.0, 0.5, -1.0, 0.0], [0.1, 0.2, 0.3, 3.0]])
  labels = jnp.array([0, 2])
  log_p = np.asarray(jax.nn.log_softmax(logits))
  for eps in (0.0, 0.1, 0.3):
    target = np.full((2, 4), eps / 4) + (1 - eps) * np.eye(4)[np.asarray(labels)]
    expected = -(target * log_p).sum(-1)
    np.testing.assert_allclose(np.asarray(steps.cross_entropy(logits, labels, eps)), expected,
                               rtol=1e-6)
  # Smoothing raises the loss of a confident correct prediction and lowers a confident wrong one.
  plain, smooth = steps.cross_entropy(logits, labels), steps.cross_entropy(logits, labels, 0.3)
  assert float(smooth[0]) > float(plain[0]) and float(smooth[1]) < float(plain[1])


def test_a_non_finite_evaluation_is_reported_when_it_happens(tmp_path, monkeypatch):
  """Epoch 1's test loss is NaN (as float16 can give): the run warns at that epoch, keeps the
  value in metrics.jsonl, names it in summary.json, and picks its best epoch among finite ones."""
  real = evaluation.evaluate
  calls = []

  def nan_at_first(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(1)
    return {**out, "test_loss": float("nan")} if len(calls) == 1 else out

  monkeypatch.setattr(evaluation, "evaluate", nan_at_first)
  warnings = []
  monkeypatch.setattr(run_lib.logging, "warning", lambda msg, *a: warnings.append(msg % a))
  result = _fit(tmp_path, 0, "run")
  assert np.isnan(result.history[0]["test_loss"]) and np.isfinite(result.history[1]["test_loss"])
  assert result.summary["nonfinite"] == [{"epoch": 1, "keys": ["test_loss"]}]
  assert len(warnings) == 1 and "epoch 1: non-finite test_loss (nan)" in warnings[0]
  assert result.summary["best"] is not None and np.isfinite(result.summary["best"]["test_accuracy"])
