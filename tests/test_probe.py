"""The cached linear probe trains the head exactly as the uncached probe does, far cheaper a step,
and resumes, switches policy and validates like any other run."""

import functools
import json

import jax
import numpy as np
import pytest
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax import parallel
from tlflax.data import batches
from tlflax.data import task as task_lib
from tlflax.errors import UserError
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import checks, evaluation, optim, probe, steps
from tlflax.train import run as run_lib

MODEL = config_lib.model_config(name="resnet10", width=4, dtype="float32")
BASE = {"train_split": "train[:96]", "test_split": "test[:24]", "image_size": 16,
        "batch_size": 32, "eval_batch_size": 16, "learning_rate": 0.1, "warmup_epochs": 0.5}


def _phase(epochs=2, **kw):
  return config_lib.phase_config("synthetic10", epochs, **{**BASE, **kw})


@pytest.fixture(scope="module")
def task():
  return task_lib.load_task(_phase(), None, seed=0)


def _fit(task, run_dir, phase, cache, **transfer):
  cfg = config_lib.transfer_config(freeze="backbone", cache_features=cache, **transfer)
  return run_lib.fit(run_spec(phase, MODEL, transfer=cfg, log_every_steps=1,
                            checkpoint={"keep": 1, "async_save": True}), task, str(run_dir))


def _curve(result):
  return np.array([[r[k] for k in ("train_loss", "train_accuracy", "test_loss", "test_accuracy")]
                   for r in result.history])


@pytest.mark.parametrize("cache,augment", [(True, False), ("augmented", True)])
def test_cached_probe_trains_as_the_uncached_probe(task, tmp_path, cache, augment):
  """Fixed features equal the uncached probe without augmentation; per-epoch augmented features
  equal it with augmentation (same crops and flips)."""
  phase = _phase(crop_padding=2 if augment else 0, flip=augment)
  cached = _fit(task, tmp_path / "cached", phase, cache)
  plain = _fit(task, tmp_path / "plain", phase, False)
  np.testing.assert_allclose(_curve(cached), _curve(plain), rtol=2e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(cached.state.params["head"]["kernel"]),
                             np.asarray(plain.state.params["head"]["kernel"]), atol=1e-5)
  assert cached.summary["features_s"] > 0 and plain.summary["features_s"] == 0
  # The backbone and its statistics did not move.
  for a, b in zip(jax.tree.leaves(cached.state.batch_stats), jax.tree.leaves(
      plain.state.batch_stats)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_a_cached_step_costs_a_small_fraction_of_an_uncached_one(task):
  phase = _phase()
  variables = resnet.init_variables(MODEL, 10, (16, 16, 3), 0)
  spec = run_spec(phase, MODEL, transfer=config_lib.transfer_config(freeze="backbone"))
  setup = optim.policy_setup("backbone", spec, optim.learning_rate_schedule(phase, 2, 3), 10,
                             variables["params"], note=print)
  state = steps.create_train_state(setup.tx, variables)
  placement = parallel.Placement.create()
  train_data = placement.replicate(batches.device_data(task.train, task.mean, task.std))
  train_data["aug_key"] = placement.replicate(np.zeros(2, np.uint32))
  rows = placement.rows(batches.epoch_rows(jax.random.key(0), 0, 96, 32))
  features = {"features": np.zeros((96, 32), np.float32), "labels": train_data["labels"]}

  def flops(fn, batch_data):
    compiled = placement.spmd(functools.partial(fn, model=setup.model, tx=setup.tx), 3,
                              split=(2,)).lower(state, batch_data, rows).compile()
    cost = compiled.cost_analysis()
    return (cost[0] if isinstance(cost, list) else cost)["flops"]

  uncached = flops(steps.train_step_on_data, train_data)
  cached = flops(probe.train_step, features)
  assert uncached > 10 * cached > 0


class Interrupt(Exception):
  pass


def test_interrupted_probe_then_unfreezing_resumes_like_an_uninterrupted_run(
    task, tmp_path, monkeypatch):
  """Epochs 1-2 train the head on cached features, epoch 3 unfreezes stages 3-4 (images again);
  a run killed during epoch 3 resumes from epoch 2 and ends where the uninterrupted one does."""
  phase = _phase(epochs=3)
  schedule = {"unfreeze": ((2, "stages:2"),)}
  real = evaluation.evaluate
  seen = []  # the params at every evaluation, i.e. after epochs 1, 2 and 3

  def evaluate_and_keep(eval_fn, state, *args, **kwargs):
    seen.append(jax.device_get(state.params))
    return real(eval_fn, state, *args, **kwargs)

  monkeypatch.setattr(evaluation, "evaluate", evaluate_and_keep)
  whole = _fit(task, tmp_path / "whole", phase, True, **schedule)
  monkeypatch.setattr(evaluation, "evaluate", real)
  init = jax.device_get(resnet.init_variables(MODEL, 10, (16, 16, 3), 0)["params"])

  def same(params, prefix):
    pairs = [(a, b) for (p, a), b in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                         jax.tree.leaves(init))
             if jax.tree_util.keystr(p).startswith(f"['{prefix}")]
    assert pairs
    return all(np.array_equal(a, b) for a, b in pairs)

  # Frozen parameters stay bit-identical until their unfreeze epoch, and move after it.
  assert all(same(seen[e], unit) for e in (0, 1) for unit in ("stem_", "stage1_", "stage3_",
                                                               "stage4_"))
  assert not same(seen[0], "head")
  assert same(seen[2], "stem_") and same(seen[2], "stage2_")
  assert not same(seen[2], "stage3_") and not same(seen[2], "stage4_")
  calls = []

  def evaluate_then_die(*args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
      raise Interrupt
    return real(*args, **kwargs)

  monkeypatch.setattr(evaluation, "evaluate", evaluate_then_die)
  with pytest.raises(Interrupt):
    _fit(task, tmp_path / "cut", phase, True, **schedule)
  monkeypatch.setattr(evaluation, "evaluate", real)
  ckpts = checkpoint.RunCheckpoints(str(tmp_path / "cut" / "checkpoints"))
  assert ckpts.latest_step() == 2 * 3
  ckpts.close()
  resumed = _fit(task, tmp_path / "cut", phase, True, **schedule)
  assert resumed.summary["resumed_from_epoch"] == 2
  for a, b in zip(jax.tree.leaves(resumed.state), jax.tree.leaves(whole.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
  assert [r["test_loss"] for r in lines] == [r["test_loss"] for r in whole.history]
  # Stages 3-4 moved in epoch 3: the backbone is no longer what the probe saw.
  first = resnet.init_variables(MODEL, 10, (16, 16, 3), 0)["params"]["stage4_block1"]
  assert not np.allclose(np.asarray(whole.state.params["stage4_block1"]["conv1"]["kernel"]),
                         np.asarray(first["conv1"]["kernel"]))


def test_cache_mode_follows_policy_and_bad_values_are_user_errors():
  cfg = config_lib.transfer_config(freeze="backbone")
  assert probe.mode_for(cfg, "backbone") == "fixed"
  assert probe.mode_for(cfg, "stages:2") is None
  assert probe.mode_for(None, "backbone") is None
  cfg.frozen_bn = "adapt"  # batch statistics depend on the batch: nothing to cache
  assert probe.mode_for(cfg, "backbone") is None
  config = config_lib.base_config()
  config.transfer.cache_features = "yes"
  with pytest.raises(UserError, match="cache_features must be 'fixed', 'augmented' or 'off'"):
    checks.validate(config)
  assert [probe.check_mode(v) for v in (True, "True", "fixed", "augmented", False, "off")] == [
      "fixed", "fixed", "fixed", "augmented", None, None]


def test_features_cached_before_the_backbone_trained_are_not_reused_after(task, tmp_path):
  """backbone -> none (epoch 2 trains the backbone) -> backbone again: epoch 3's head must train
  on the trained backbone's features, as the uncached probe does, not on epoch 1's (no
  augmentation, so fixed features are exactly what the uncached probe sees)."""
  phase = _phase(epochs=3, crop_padding=0, flip=False)
  schedule = {"unfreeze": ((1, "none"), (2, "backbone"))}
  cached = _fit(task, tmp_path / "cached", phase, True, **schedule)
  plain = _fit(task, tmp_path / "plain", phase, False, **schedule)
  np.testing.assert_allclose(_curve(cached), _curve(plain), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(cached.state.params), jax.tree.leaves(plain.state.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
