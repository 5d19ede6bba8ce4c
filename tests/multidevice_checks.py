"""Checks that need several devices; test_parallel.py runs this file in a subprocess:

    python tests/multidevice_checks.py OUT.json CACHE_DIR

It forces 8 CPU devices before jax starts, measures, and writes the numbers as one JSON object;
the tests assert on them. One process for every check, so jax starts once and compilations are
shared through the persistent cache in CACHE_DIR. (Imported as a module it changes nothing.)
"""

import os
import sys

if __name__ == "__main__":
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import functools
import json

import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from runspecs import run_spec

from tlflax import config as config_lib
from tlflax import parallel
from tlflax.config import phase_config
from tlflax.data import batches
from tlflax.data import task as task_lib
from tlflax.errors import UserError
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import evaluation, optim, steps
from tlflax.train import run as run_lib

# ResNet-10: the parallel machinery does not depend on depth, and half the depth halves every
# compilation of this file.
MODEL = config_lib.model_config(name="resnet10", width=4, dtype="float32")
# A small learning rate: at larger ones this tiny net amplifies float rounding (1e-7 -> 1e-3
# within a few steps, on one device as much as on eight), which would hide what is compared.
PHASE = phase_config("synthetic10", 2, train_split="train[:128]", test_split="test[:37]",
                     image_size=16, batch_size=32, eval_batch_size=16, learning_rate=0.002,
                     warmup_epochs=0.0, crop_padding=2)


# The multi-process test's run, as overrides of configs/smoke.py: 10 classes, a small learning
# rate, 2 epochs of 2 steps (few gloo round trips; float rounding is not amplified).
TINY = {"model.name": "resnet10", "model.width": 4, "target.dataset": "synthetic10", "target.train_split": "train[:64]",
        "target.test_split": "test[:40]", "target.image_size": 16, "target.epochs": 2,
        "target.batch_size": 32, "target.eval_batch_size": 20, "target.learning_rate": 0.002,
        "target.warmup_epochs": 0.0, "target.val_split": "train[64:104]", "checkpoint.keep": 3}


def tiny_config():
  """configs/smoke.py with the TINY overrides."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "smoke", os.path.join(os.path.dirname(__file__), "..", "configs", "smoke.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in TINY.items():
    block, name = key.split(".")
    config[block][name] = value
  return config


def max_rel(a, b) -> float:
  """||a - b|| / ||a|| over all leaves of two trees (float64)."""
  pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64))
           for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)]
  return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in pairs)
                       / sum(np.sum(x ** 2) for x, _ in pairs)))


def steps_check(task, reference, placements) -> dict:
  """3 steps of the per-shard step: the full global batch on one device (`reference`, where the
  axis has size 1 and every mean is the identity) vs split over each of `placements`, with the
  model and optimizer `fit` builds (the persistent cache then shares the compiled steps with the
  fits below). The head bias starts at 0, so weight decay adds nothing to its first update: the
  ratio of first updates is the ratio of gradients."""
  shapes = resnet.variable_shapes(MODEL, 10, (16, 16, 3))
  setup = optim.policy_setup("none", run_spec(PHASE, MODEL),
                             optim.learning_rate_schedule(PHASE, PHASE.epochs, 4), 10,
                             shapes["params"])
  variables = jax.device_get(resnet.init_variables(MODEL, 10, (16, 16, 3), 0))
  host_data = {**batches.device_data(task.train, task.mean, task.std),
               "aug_key": jax.random.key_data(jax.random.key(3))}
  table = batches.epoch_rows(jax.random.key(1), 0, len(task.train), PHASE.batch_size)

  def run(place):
    state = place.jit_replicated(functools.partial(steps.create_train_state, setup.tx))(
        place.replicate(variables))
    step = place.spmd(functools.partial(
        steps.train_step_on_data, model=setup.model, tx=setup.tx,
        label_smoothing=PHASE.label_smoothing, crop_padding=PHASE.crop_padding, flip=PHASE.flip),
        3, split=(2,), donate=(0,))
    device_data, rows = place.replicate(host_data), place.rows(table)
    out = []
    for _ in range(3):
      state, metrics = step(state, device_data, rows)
      out.append((float(metrics["loss"]), jax.device_get(state),
                  len(state.params["head"]["bias"].sharding.device_set)))
    return out

  def first_update(runs):
    return runs[0][1].params["head"]["bias"] - variables["params"]["head"]["bias"]

  ref = run(reference)
  out = {}
  for name, place in placements.items():
    runs = run(place)
    out[name] = {
        "losses": [r[0] for r in runs], "reference_losses": [r[0] for r in ref],
        "params_rel": max(max_rel(r[1].params, q[1].params) for r, q in zip(ref, runs)),
        "batch_stats_rel": max(max_rel(r[1].batch_stats, q[1].batch_stats)
                               for r, q in zip(ref, runs)),
        "head_bias_grad_ratio": float(np.linalg.norm(first_update(runs))
                                      / np.linalg.norm(first_update(ref))),
        "state_devices": runs[-1][2], "reference_devices": ref[-1][2],
    }
  return out


def batch_check(task) -> dict:
  """The global batch built by 8 shards (each its own block) vs by one device."""
  place = parallel.Placement.create("shard_map")
  host_data = batches.device_data(task.train, task.mean, task.std)
  table = batches.epoch_rows(jax.random.key(1), 0, len(task.train), 32)
  key = jax.random.key(5)
  build = functools.partial(batches.shard_train_batch, crop_padding=2, flip=True)
  whole = jax.jit(functools.partial(build, axis_name=None))(host_data, table[0], key)
  sharded = jax.jit(jax.shard_map(
      lambda d, rows, k: build(d, rows[0], k, axis_name=parallel.AXIS), mesh=place.mesh,
      in_specs=(P(), P(None, parallel.AXIS), P()), out_specs=P(parallel.AXIS)))(
          place.replicate(host_data), place.rows(table), key)
  return {"images_equal": bool(np.array_equal(whole["image"], sharded["image"])),
          "labels_equal": bool(np.array_equal(whole["label"], sharded["label"])),
          "images_differ_between_examples": bool(
              not np.array_equal(whole["image"][0], whole["image"][1]))}


class Interrupt(Exception):
  pass


STREAM = config_lib.data_config(pipeline="stream")


def _fit(task, place, run_dir, interrupt=False, data_cfg=None):
  """Two epochs; with `interrupt`, dies during epoch 2's evaluation (epoch 1 is checkpointed).
  `data_cfg`: config.data (None: the splits on the devices)."""
  real = evaluation.evaluate
  calls = []

  def evaluate(*args, **kwargs):
    calls.append(1)
    if interrupt and len(calls) == 2:
      raise Interrupt
    return real(*args, **kwargs)

  evaluation.evaluate = evaluate
  try:
    return run_lib.fit(run_spec(PHASE, MODEL, checkpoint={"keep": 3, "async_save": True},
                              log_every_steps=100, data=data_cfg), task, run_dir,
                     placement=place)
  except Interrupt:
    return None
  finally:
    evaluation.evaluate = real


def resume_check(task, root, one, eight, pmap8) -> dict:
  """Checkpoints move between 8 devices and 1; pmap and shard_map runs agree."""
  reference = _fit(task, one, f"{root}/one")
  out = {"reference_history": [{k: r[k] for k in ("train_loss", "test_loss", "test_count")}
                               for r in reference.history]}
  for name, first, second in (("8_to_1", eight, one), ("1_to_8", one, eight)):
    run_dir = f"{root}/{name}"
    assert _fit(task, first, run_dir, interrupt=True) is None
    resumed = _fit(task, second, run_dir)
    out[name] = {"resumed_from_epoch": resumed.summary["resumed_from_epoch"],
                 "devices": resumed.summary["devices"],
                 "params_rel": max_rel(reference.state.params, resumed.state.params),
                 "batch_stats_rel": max_rel(reference.state.batch_stats,
                                            resumed.state.batch_stats),
                 "history": [{k: r[k] for k in ("train_loss", "test_loss", "test_count")}
                             for r in resumed.history]}
  for name, place in (("pmap", pmap8), ("shard_map", eight)):
    run = _fit(task, place, f"{root}/whole_{name}")
    out[f"whole_{name}"] = {"params_rel": max_rel(reference.state.params, run.state.params),
                            "summary": {k: run.summary[k] for k in (
                                "backend", "devices", "processes", "parallel")},
                            "history": [{k: r[k] for k in ("train_loss", "test_loss",
                                                           "test_count")}
                                        for r in run.history]}
  # Streamed from host memory: whole runs on 8 devices, and one interrupted on the device path
  # and resumed streaming.
  for name, place in (("stream_shard_map", eight), ("stream_pmap", pmap8)):
    run = _fit(task, place, f"{root}/{name}", data_cfg=STREAM)
    out[name] = {"params_rel": max_rel(reference.state.params, run.state.params),
                 "pipeline": run.summary["pipeline"],
                 "history": [{k: r[k] for k in ("train_loss", "test_loss", "test_count")}
                             for r in run.history]}
  assert _fit(task, eight, f"{root}/stream_resume", interrupt=True) is None
  resumed = _fit(task, eight, f"{root}/stream_resume", data_cfg=STREAM)
  out["stream_resume"] = {"resumed_from_epoch": resumed.summary["resumed_from_epoch"],
                          "params_rel": max_rel(reference.state.params, resumed.state.params),
                          "history": [{k: r[k] for k in ("train_loss", "test_loss", "test_count")}
                                      for r in resumed.history]}
  restored, _ = checkpoint.restore_variables(f"{root}/one", eight.replicated)
  out["init_from_devices"] = len(restored["params"]["head"]["kernel"].sharding.device_set)
  return out


def tiny_on_four_devices(root: str) -> list[dict]:
  """The multi-process test's reference: its run in one process on 4 devices."""
  from tlflax.train import phase as phase_lib
  four = parallel.Placement.create("shard_map", devices=jax.devices()[:4])
  phase_lib.run_phase("scratch", tiny_config(), f"{root}/four", placement=four)
  with open(f"{root}/four/scratch/metrics.jsonl") as f:
    return [json.loads(line) for line in f]


def batch_error_check(task, eight) -> str:
  bad = phase_config("synthetic10", 1, batch_size=100, image_size=16)
  try:
    run_lib.fit(run_spec(bad, MODEL), task, "/nonexistent/never-created", placement=eight)
  except UserError as e:
    return str(e)
  return ""


def rank_check(task, one, eight, pmap8) -> dict:
  """--mode=rank's features of 37 images (not a multiple of 8: the last batch is padded) on 8
  devices, under shard_map and pmap, from the split on the devices and streamed from the host,
  against one device."""
  from tlflax.use import rank
  split = task_lib.Split(task.test.images, task.test.labels)
  variables = resnet.init_variables(MODEL, task.num_classes, split.images.shape[1:], 3)
  candidate = rank.Candidate("random", resnet.from_config(MODEL, task.num_classes), variables,
                             task.mean, task.std, False, {})
  stream = config_lib.data_config(pipeline="stream")
  feats = {name: rank.features(candidate, split, task.num_classes, place, 16, data)
           for name, place, data in (("one", one, None), ("eight", eight, None),
                                     ("pmap8", pmap8, None), ("eight_stream", eight, stream),
                                     ("pmap8_stream", pmap8, stream))}
  diff = {name: max(float(np.max(np.abs(feats[name][k] - feats["one"][k]))) for k in feats["one"])
          for name in ("eight", "pmap8", "eight_stream", "pmap8_stream")}
  return {"shapes": {k: list(v.shape) for k, v in feats["one"].items()}, **diff}


def main(out_path: str, cache: str) -> None:
  jax.config.update("jax_compilation_cache_dir", cache)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  task = task_lib.load_task(PHASE, None, seed=0)
  one = parallel.Placement.create("shard_map", devices=jax.devices()[:1])
  eight = parallel.Placement.create("shard_map")
  pmap8 = parallel.Placement.create("pmap")
  result = {"devices": jax.device_count(),
            "steps": steps_check(task, one, {"shard_map": eight}),
            "batch": batch_check(task),
            "resume": resume_check(task, os.path.dirname(os.path.abspath(out_path)), one, eight,
                                   pmap8),
            "batch_error": batch_error_check(task, eight),
            "rank": rank_check(task, one, eight, pmap8),
            "tiny_four_devices": tiny_on_four_devices(os.path.dirname(os.path.abspath(out_path)))}
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)


if __name__ == "__main__":
  main(*sys.argv[1:3])
