"""What the bench measures, on the steps a run's `epochs.Trainer` compiles: a trainer for a
variant or freeze policy on random images of the config's target shape, compile seconds (cold
and warm), steady-state step seconds with the host's share, XLA's FLOPs, peak device memory, and
the peak TFLOP/s that MFU divides by. `bench.py` is the command line around it."""

import contextlib
import tempfile
import time

import jax
import numpy as np

from tlflax import parallel
from tlflax.data import feeds
from tlflax.data import task as task_lib
from tlflax.models import resnet
from tlflax.train import epochs as epochs_lib
from tlflax.train import monitor, steps
from tlflax.train import spec as spec_lib

# Dense peak TFLOP/s per chip: (bfloat16, float32 as XLA computes it by default: TF32 on NVIDIA
# Ampere and later, bfloat16 passes on TPU). First match of the device_kind wins.
PEAK_TFLOPS = [
    ("H200", (989.0, 494.0)), ("H100", (989.0, 494.0)), ("GH200", (989.0, 494.0)),
    ("B200", (2250.0, 1100.0)), ("A100", (312.0, 156.0)), ("L40S", (362.0, 183.0)),
    ("L4", (121.0, 60.0)), ("A10", (125.0, 62.5)), ("TPU v6 lite", (918.0, 918.0)),
    ("TPU v5 lite", (197.0, 197.0)), ("TPU v5p", (459.0, 459.0)), ("TPU v5", (459.0, 459.0)),
    ("TPU v4", (275.0, 275.0)), ("TPU v3", (123.0, 123.0)),
]


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0) -> float | None:
  """The device's dense peak for the compute dtype, or `override`, or None when unknown."""
  if override:
    return override
  for name, (bf16, f32) in PEAK_TFLOPS:
    if name in device_kind:
      return bf16 if dtype == "bfloat16" else f32
  return None


# ------------------------------------------------------------------------------------------------
# --what=step
# ------------------------------------------------------------------------------------------------


def num_classes(dataset: str) -> int:
  if dataset in task_lib.SYNTHETIC:
    return task_lib.SYNTHETIC[dataset]
  with contextlib.suppress(Exception):
    import tensorflow_datasets as tfds  # lazily: TensorFlow only for a tfds name
    return tfds.builder(dataset).info.features["label"].num_classes
  return 100


def random_task(phase, num_classes: int, batches: int = 4):
  """A Task of random uint8 images of the phase's shape: `batches` training batches, one
  evaluation batch."""

  rng = np.random.default_rng(0)
  shape = (phase.image_size, phase.image_size, 3)

  def split(n):
    return task_lib.Split(rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                      (np.arange(n) % num_classes).astype(np.int32))

  return task_lib.Task("random", split(batches * phase.batch_size), split(phase.eval_batch_size),
                   num_classes, np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))


def _policy(variant: str) -> str:
  return {"full": "none", "linear_probe": "backbone", "eval": "none"}.get(variant, variant)


def bench_trainer(config, policy: str, task, placement, cache_features: bool = False):
  """(trainer, state, rows): the `epochs.Trainer` a run of `config` builds, under freeze
  `policy` (a transfer run with that policy, or the scratch run for 'none'), started from a fresh
  init on `task`; `rows` is epoch 0's table. Nothing is compiled yet."""

  cfg = config.copy_and_resolve_references()
  mode = "scratch" if policy == "none" else "transfer"
  cfg.transfer.freeze, cfg.transfer.unfreeze = policy, ()
  cfg.transfer.cache_features = cache_features
  spec = spec_lib.RunSpec.create(mode, cfg)
  plan = spec_lib.Plan.create(spec, len(task.train), placement)
  recorder = monitor.Recorder(tempfile.gettempdir(), "bench", plan, quiet=True)
  feed = feeds.make_feed(spec.data, placement, task, spec.phase.eval_batch_size, recorder.note)
  trainer = epochs_lib.Trainer(spec, plan, task, placement, feed, recorder)
  variables = placement.replicate(resnet.init_variables(
      spec.model, task.num_classes, task.train.images.shape[1:], spec.seed))
  state = trainer.begin(jax.random.key(spec.seed), variables=variables)
  return trainer, state, trainer.epoch_rows(0)


def _flops(compiled, num_devices: int) -> float:
  """XLA's FLOP count of one step over all devices (its cost analysis is per device)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  return float(cost.get("flops", float("nan"))) * num_devices


def _compile_twice(trainer, state, rows) -> tuple[float, float]:
  """(cold s, warm s): the trainer's steps compiled once, then again after dropping the
  in-memory caches, so the second compile is what a rerun gets from the persistent cache."""
  t0 = time.perf_counter()
  trainer.compile(state, rows)
  cold = time.perf_counter() - t0
  jax.clear_caches()
  t0 = time.perf_counter()
  trainer.compile(state, rows)
  return cold, time.perf_counter() - t0


def _time_steps(run, n: int) -> tuple[float, float]:
  """(seconds per call, host share): `run()` called n times after one warm-up; the host share is
  the fraction of the wall time spent inside the calls (dispatch), the rest waiting on the
  device."""
  jax.block_until_ready(run())
  host = 0.0
  t0 = time.perf_counter()
  out = None
  for _ in range(n):
    t = time.perf_counter()
    out = run()
    host += time.perf_counter() - t
  jax.block_until_ready(out)
  total = time.perf_counter() - t0
  return total / n, host / total


def measure_variant(variant: str, config, task, placement, num_steps: int) -> dict:
  """One variant's compile times, speed and FLOPs: the steps a run's `Trainer` compiles and
  runs, under the variant's freeze policy."""
  trainer, state, rows = bench_trainer(config, _policy(variant), task, placement,
                                       cache_features=variant == "linear_probe")
  row = {"variant": variant}
  row["compile_s"], row["compile_warm_s"] = _compile_twice(trainer, state, rows)
  if variant == "eval":
    variables, args = steps.eval_variables(state), trainer.eval_args()
    step_s, host = _time_steps(lambda: trainer.eval_step(variables, *args), num_steps)
    images, compiled = trainer.feed.eval_batch, trainer.eval_step
  else:
    step_data = trainer.epoch_data(state, 0, rows)
    if step_data is not None:
      row["features_s"] = trainer.cache.seconds
      row["features_img_per_s"] = len(task.train) / trainer.cache.seconds
    args = trainer.train_args(rows, step_data)
    carry = [state, steps.zero_metrics()]

    def run():
      carry[0], carry[1] = trainer.train_step(carry[0], carry[1], *args)
      return carry[1]

    step_s, host = _time_steps(run, num_steps)
    images, compiled = config.target.batch_size, trainer.train_step
  row.update(step_ms=1e3 * step_s, img_per_s=images / step_s, host_share=host,
             flops_per_step=_flops(compiled, placement.num_devices))
  row["tflops"] = row["flops_per_step"] / step_s / 1e12
  return row


def peak_memory() -> int | None:
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def freeze_benchmark(config, policies, num_steps: int) -> list[dict]:
  """Times the target's train step under each freeze policy: the step a run's `Trainer`
  compiles (the probe uncached, so every policy runs on images)."""

  placement = parallel.Placement.create(config.parallel)
  task = random_task(config.target, num_classes(config.target.dataset))
  rows = []
  for policy in policies:
    trainer, state, table = bench_trainer(config, policy, task, placement)
    t0 = time.perf_counter()
    trainer.compile(state, table)
    compile_s = time.perf_counter() - t0
    args = trainer.train_args(table)
    sums = steps.zero_metrics()
    state, sums = trainer.train_step(state, sums, *args)  # warm-up
    jax.block_until_ready(sums)
    t0 = time.perf_counter()
    for _ in range(num_steps):
      state, sums = trainer.train_step(state, sums, *args)
    jax.block_until_ready((state, sums))
    step_s = (time.perf_counter() - t0) / num_steps
    rows.append({"policy": policy, "compile_s": compile_s, "step_ms": 1e3 * step_s,
                 "img_per_s": config.target.batch_size / step_s,
                 "gflops_per_step": _flops(trainer.train_step, placement.num_devices) / 1e9})
  base = rows[0]["step_ms"]
  for row in rows:
    row["speedup"] = base / row["step_ms"]
  return rows
