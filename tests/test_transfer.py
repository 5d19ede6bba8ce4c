"""Freezing that really freezes, per-layer learning rates, rules over paths, restore and merge."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax.errors import UserError
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import optim, steps, transfer
from tlflax.train import run as run_lib

MODEL = config_lib.model_config(name="resnet18", width=4, dtype="float32")
PHASE = config_lib.phase_config("synthetic10", 2, learning_rate=0.1, weight_decay=0.05,
                                warmup_epochs=0.0)
FROZEN_PREFIX = ("stem_", "stage1_", "stage2_")


@functools.cache
def _variables(num_classes=10, seed=0):
  return resnet.init_variables(MODEL, num_classes, (16, 16, 3), seed)


def _batch(n=16, seed=0):
  k1, k2 = jax.random.split(jax.random.key(seed))
  return {"image": jax.random.normal(k1, (n, 16, 16, 3)),
          "label": jax.random.randint(k2, (n,), 0, 10)}


def _setup(policy, phase=PHASE, **transfer_overrides):
  spec = run_spec(phase, MODEL, transfer=config_lib.transfer_config(**transfer_overrides))
  return optim.policy_setup(policy, spec, optim.learning_rate_schedule(phase, phase.epochs, 10),
                            10, _variables()["params"])


def _run_steps(setup, num_steps=3):
  state = steps.create_train_state(setup.tx, _variables())
  step = jax.jit(functools.partial(steps.train_step, model=setup.model, tx=setup.tx))
  for i in range(num_steps):
    state, _ = step(state, _batch(seed=i))
  return state


def _same(a, b):
  return bool(np.array_equal(np.asarray(a), np.asarray(b)))


def test_frozen_params_and_their_batch_stats_do_not_change_and_trainable_ones_move():
  state = _run_steps(_setup("stages:2"))
  before = _variables()
  for collection in ("params", "batch_stats"):
    new, old = transfer.flatten(getattr(state, collection)), transfer.flatten(before[collection])
    frozen = [p for p in old if p.startswith(FROZEN_PREFIX)]
    trainable = [p for p in old if not p.startswith(FROZEN_PREFIX)]
    assert frozen and trainable
    assert all(_same(new[p], old[p]) for p in frozen), collection
    assert all(not _same(new[p], old[p]) for p in trainable), collection


def test_frozen_params_hold_no_optimizer_state():
  setup = _setup("stages:2")
  params = _variables()["params"]
  opt_state = setup.tx.init(params)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(opt_state)[0]]
  assert not any(prefix in p for p in paths for prefix in FROZEN_PREFIX)
  trainable = [p for p in transfer.flatten(params) if not p.startswith(FROZEN_PREFIX)]
  momentum = [p for p in paths if ".trace[" in p]
  assert len(momentum) == len(trainable)


def test_weight_decay_and_clipping_see_only_trainable_params():
  phase = config_lib.phase_config("synthetic10", 2, learning_rate=1.0, weight_decay=0.5,
                                  momentum=0.0, warmup_epochs=0.0, grad_clip_norm=1.0)
  setup = _setup("stages:2", phase=phase)
  params = _variables()["params"]
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = setup.tx.update(zero, setup.tx.init(params), params)
  for path, u in transfer.flatten(updates).items():
    expected = 0.0 if path.startswith(FROZEN_PREFIX) else -0.5 * transfer.flatten(params)[path]
    np.testing.assert_allclose(u, expected, rtol=1e-6, atol=1e-7)
  # Huge gradients on frozen leaves must not change the clipped updates of trainable ones.
  grads = jax.tree.map(lambda x: jnp.full_like(x, 1e-3), params)
  loud = jax.tree_util.tree_map_with_path(
      lambda p, g: g * 1e6 if transfer.path_str(p).startswith(FROZEN_PREFIX) else g, grads)
  quiet_updates, _ = setup.tx.update(grads, setup.tx.init(params), params)
  loud_updates, _ = setup.tx.update(loud, setup.tx.init(params), params)
  for a, b in zip(jax.tree.leaves(quiet_updates), jax.tree.leaves(loud_updates)):
    np.testing.assert_array_equal(a, b)


def test_frozen_batchnorm_adapts_when_asked():
  state = _run_steps(_setup("stages:2", frozen_bn="adapt"), num_steps=1)
  old, new = transfer.flatten(_variables()["batch_stats"]), transfer.flatten(state.batch_stats)
  assert not _same(new["stem_bn/mean"], old["stem_bn/mean"])
  assert _same(transfer.flatten(state.params)["stem_bn/scale"],
               transfer.flatten(_variables()["params"])["stem_bn/scale"])


def _flops(policy):
  setup = _setup(policy)
  state = steps.create_train_state(setup.tx, _variables())
  step = jax.jit(functools.partial(steps.train_step, model=setup.model, tx=setup.tx))
  cost = step.lower(state, _batch(32)).compile().cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_backward_pass_skips_the_frozen_prefix():
  full, half, probe = _flops("none"), _flops("stages:2"), _flops("backbone")
  # Forward is about a third of a step; freezing half the network removes a good part of the
  # backward pass, a linear probe nearly all of it.
  assert half < 0.8 * full
  assert probe < 0.5 * full
  assert probe < half


def test_freeze_policies_and_rule_errors():
  params = _variables()["params"]
  labels = transfer.flatten(transfer.trainable_labels(params, "backbone", 4))
  assert {p for p, v in labels.items() if v == transfer.TRAINABLE} == {"head/kernel", "head/bias"}
  custom = transfer.flatten(transfer.trainable_labels(params, (r"conv\d/kernel$",), 4))
  assert custom["stage3_block1/conv2/kernel"] == transfer.FROZEN
  assert custom["stage3_block1/bn1/scale"] == transfer.TRAINABLE
  with pytest.raises(UserError, match="matches no parameter"):
    transfer.trainable_labels(params, ("^stage9_",), 4)
  with pytest.raises(UserError, match="freezes every parameter"):
    transfer.trainable_labels(params, (".*",), 4)
  with pytest.raises(UserError, match="unknown freeze policy"):
    transfer.trainable_labels(params, "stages:7", 4)
  with pytest.raises(UserError, match=r"no rule for 2 parameters \(head/bias, head/kernel\)"):
    transfer.label_by_rules(params, [("^stem_", 1), ("^stage", 2)])


def test_per_layer_learning_rates():
  params = _variables()["params"]
  factors = transfer.flatten(transfer.lr_multipliers(params, [("bn", 0.0)], 0.5, 4))
  assert factors["head/kernel"] == 1.0
  assert factors["stage4_block2/conv1/kernel"] == 0.5
  assert factors["stage1_block1/conv1/kernel"] == 0.5**4
  assert factors["stem_conv/kernel"] == 0.5**5
  assert factors["stage2_block1/bn1/scale"] == 0.0
  phase = config_lib.phase_config("synthetic10", 2, learning_rate=1.0, weight_decay=0.0,
                                  momentum=0.0, warmup_epochs=0.0)
  setup = _setup("none", phase=phase, layer_decay=0.5)
  ones = jax.tree.map(jnp.ones_like, params)
  updates = transfer.flatten(setup.tx.update(ones, setup.tx.init(params), params)[0])
  assert float(updates["stage1_block1/conv1/kernel"][0, 0, 0, 0]) == pytest.approx(-(0.5**4))
  assert float(updates["head/bias"][0]) == pytest.approx(-1.0)


def test_gradual_unfreezing_keeps_state_of_already_trainable_params():
  params = _variables()["params"]
  probe, full = _setup("backbone"), _setup("none")
  old = probe.tx.init(params)
  old = jax.tree.map(lambda x: x + 7 if x.ndim else x + 3, old)  # pretend it trained
  carried = optim.carry_opt_state(old, full.tx.init(params))
  flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(carried)[0]}
  head = [x for p, x in flat.items() if "['head']" in p]
  backbone = [x for p, x in flat.items() if "['stage1_block1']" in p]
  counts = [x for p, x in flat.items() if p.endswith(".count")]
  assert head and all(np.all(np.asarray(x) == 7) for x in head)
  assert backbone and all(np.all(np.asarray(x) == 0) for x in backbone)
  assert counts and all(int(c) == 3 for c in counts)
  cfg = config_lib.transfer_config(freeze="backbone", unfreeze=((2, "stages:2"), (4, "none")))
  assert [transfer.policy_at(cfg, e) for e in range(5)] == [
      "backbone", "backbone", "stages:2", "stages:2", "none"]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
  """A one-epoch source run with real checkpoints (10 classes)."""
  from tlflax.data import task as task_lib
  run_dir = tmp_path_factory.mktemp("source")
  phase = config_lib.phase_config("synthetic10", 1, train_split="train[:64]",
                                  test_split="test[:16]", image_size=16, batch_size=32,
                                  warmup_epochs=0.0)
  task = task_lib.load_task(phase, None, seed=0)
  result = run_lib.fit(run_spec(phase, MODEL), task, str(run_dir))
  return str(run_dir), result


def test_transfer_restore_keeps_backbone_and_reinitialises_head(source_run):
  run_dir, result = source_run
  restored, name = checkpoint.restore_variables(run_dir)
  assert name.endswith("/checkpoints/2")
  fresh = resnet.init_variables(MODEL, 100, (16, 16, 3), seed=5)
  merged = transfer.merge_pretrained(fresh, restored, ("^head/",), name)
  src = transfer.flatten(result.state.params)
  out = transfer.flatten(merged["params"])
  assert all(_same(out[p], src[p]) for p in out if not p.startswith("head/"))
  assert out["head/kernel"].shape == (32, 100) and src["head/kernel"].shape == (32, 10)
  assert _same(out["head/kernel"], transfer.flatten(fresh["params"])["head/kernel"])
  stats = transfer.flatten(merged["batch_stats"])
  assert all(_same(stats[p], v) for p, v in transfer.flatten(result.state.batch_stats).items())


def test_checkpoint_that_does_not_fit_fails_with_a_listing(source_run):
  run_dir, _ = source_run
  restored, name = checkpoint.restore_variables(run_dir)
  other_classes = resnet.variable_shapes(MODEL, 100, (16, 16, 3))
  with pytest.raises(UserError, match=r"shape mismatch \[params/head/bias \(10,\) vs \(100,\), "
                                      r"params/head/kernel \(32, 10\) vs \(32, 100\)\]"):
    transfer.merge_pretrained(other_classes, restored, (), name)
  resnet34 = config_lib.model_config(name="resnet34", width=4, dtype="float32")
  deeper = resnet.variable_shapes(resnet34, 10, (16, 16, 3))
  with pytest.raises(UserError, match=r"missing \[batch_stats/stage1_block3/bn1/mean, .*"
                                      r"\(\+74 more\)\]"):
    transfer.merge_pretrained(deeper, restored, ("^head/",), name)
  with pytest.raises(UserError, match="holds no tlflax checkpoint"):
    checkpoint.restore_variables(str(run_dir) + "/nothing_here")
  same = transfer.merge_pretrained(resnet.init_variables(MODEL, 10, (16, 16, 3), 0), restored,
                                   (), name)  # equal class counts, reinit=(): plain fine-tuning
  assert _same(transfer.flatten(same["params"])["head/kernel"],
               transfer.flatten(restored["params"])["head/kernel"])
