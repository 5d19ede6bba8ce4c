"""Benchmarks of the steps training runs, on the current devices, without any dataset.

  python -m tlflax.bench --config=smoke --json=b.json [--compare-torch]
  python -m tlflax.bench --what=freeze --config=...

`--what=step` (default): per variant — `full` (train everything), `stages:N` (stem and the first
N stages frozen), `linear_probe` (the head on cached features) and `eval` — compile seconds, cold
(empty compilation cache) and warm (from the persistent cache), steady-state images per second,
XLA's FLOPs per step, achieved TFLOP/s and MFU where the device's peak is known; the host's share
of step time, peak device memory where the backend reports it, and the seconds from process start
to the first train step with a cold and a warm compilation cache. Every variant runs the steps a
run's `trainer.Trainer` compiles (`bench_trainer`: the config's model, the target's class count),
fed random images of the config's target shape.

`--what=freeze`: the same train step of the target model per freeze policy (`--policies`).
"""

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from tlflax.config import cli
from tlflax import config as config_lib
from tlflax.errors import UserError

FLAGS = flags.FLAGS
flags.DEFINE_enum("what", "step", ["step", "freeze", "startup"],
                  "step: the variants' steps; freeze: per freeze policy; startup: internal (one "
                  "cold or warm start, timed by the parent).")
flags.DEFINE_list("variants", ["full", "stages:2", "linear_probe", "eval"],
                  "--what=step variants: full, stages:N, linear_probe, eval.")
flags.DEFINE_list("policies", ["none", "stages:2", "stages:4", "backbone"],
                  "--what=freeze: freeze policies.")
flags.DEFINE_integer("steps", 10, "Timed steps per variant, after one warm-up step.")
flags.DEFINE_string("json", "", "--what=step: write the results as JSON to this file.")
flags.DEFINE_string("out", "", "--what=freeze: also write the rows as JSON to this file.")
flags.DEFINE_bool("compare-torch", False,
                  "Also time the same ResNet train step in PyTorch on this CPU and print the ratio.")
flags.DEFINE_string("torch_python", "", "Interpreter with torch for --compare-torch (default: "
                    "this one).")
flags.DEFINE_float("peak_tflops", 0.0, "Peak TFLOP/s per device for MFU, where the table below "
                   "does not know the device (e.g. a CPU: cores x GHz x FLOP/cycle / 1000).")
flags.DEFINE_bool("startup", True, "--what=step: time process start to first step (2 "
                  "subprocesses).")
flags.DEFINE_string("cache_dir", "", "Compilation cache (default: a fresh temporary folder, so "
                    "'cold' is cold).")

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


def _num_classes(dataset: str) -> int:
  from tlflax.data import task as task_lib
  if dataset in task_lib.SYNTHETIC:
    return task_lib.SYNTHETIC[dataset]
  with contextlib.suppress(Exception):
    import tensorflow_datasets as tfds
    return tfds.builder(dataset).info.features["label"].num_classes
  return 100


def random_task(phase, num_classes: int, batches: int = 4):
  """A Task of random uint8 images of the phase's shape: `batches` training batches, one
  evaluation batch."""
  import numpy as np

  from tlflax.data import task as task_lib
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
  """(trainer, state, rows): the `trainer.Trainer` a run of `config` builds, under freeze
  `policy` (a transfer run with that policy, or the scratch run for 'none'), started from a fresh
  init on `task`; `rows` is epoch 0's table. Nothing is compiled yet."""
  import jax

  from tlflax.models import resnet
  from tlflax.train import monitor
  from tlflax.data import feeds
  from tlflax.train import spec as spec_lib
  from tlflax.train import epochs as epochs_lib
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
  import jax
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
  import jax
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
  from tlflax.train import steps
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


def _peak_memory() -> int | None:
  import jax
  stats = jax.local_devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def _startup(config_path: str, overrides: list[str], cache_dir: str) -> float:
  """Seconds from launching `python -m tlflax.bench --what=startup` to its first train step."""
  env = {**os.environ, "TLFLAX_BENCH_T0": repr(time.time())}
  out = subprocess.run([sys.executable, "-m", "tlflax.bench", "--what=startup",
                        f"--config={config_path}", f"--cache_dir={cache_dir}", *overrides],
                       env=env, capture_output=True, text=True, check=False)
  lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
  if out.returncode or not lines:
    raise RuntimeError(f"startup run failed: {out.stderr.strip().splitlines()[-1:]}")
  return json.loads(lines[-1])["first_step_s"]


def startup_main(config) -> None:
  """The child of `_startup`: initialise, compile the full train step (from the cache when
  warm), take one step, print the seconds since the parent launched this process."""
  import jax

  from tlflax import parallel
  from tlflax.train import steps
  placement = parallel.Placement.create(config.parallel)
  task = random_task(config.target, _num_classes(config.target.dataset), batches=1)
  trainer, state, rows = bench_trainer(config, "none", task, placement)
  state = trainer.ready(0, state, rows)
  jax.block_until_ready(trainer.train_step(state, steps.zero_metrics(),
                                           *trainer.train_args(rows)))
  print(json.dumps({"first_step_s": time.time() - float(os.environ["TLFLAX_BENCH_T0"])}))


def compare_torch(config, num_classes: int, python: str) -> dict:
  """The same train step in PyTorch (tlflax/torch_reference.py), run by `python`."""
  from tlflax.models import resnet
  phase = config.target
  stages = resnet.create_model(config.model.name, num_classes).stage_sizes
  script = os.path.join(os.path.dirname(__file__), "torch_reference.py")
  try:
    out = subprocess.run(
        [python, script, f"--batch={phase.batch_size}", f"--width={config.model.width}",
         f"--classes={num_classes}", f"--size={phase.image_size}",
         f"--stages={','.join(map(str, stages))}", f"--steps={max(3, FLAGS.steps // 2)}"],
        capture_output=True, text=True, check=False)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    last = (out.stderr.strip().splitlines() or ["no output"])[-1]
  except OSError as e:
    out, lines, last = None, [], e.strerror
  if out is None or out.returncode or not lines:
    raise UserError(f"--compare-torch: {python} could not run the PyTorch step ({last}): install "
                    "torch there, or pass --torch_python=PATH to an interpreter that has it")
  return json.loads(lines[-1])


def step_benchmark(config, variants, num_steps: int, config_path: str, overrides: list[str]
                   ) -> dict:
  """Every variant, then the start-up times; the dictionary `--json` writes."""
  import jax

  from tlflax.models import conv
  from tlflax.models import resnet
  from tlflax import parallel
  placement = parallel.Placement.create(config.parallel)
  phase = config.target
  placement.check_batch(phase.batch_size, "config.target.batch_size")
  task = random_task(phase, _num_classes(phase.dataset))
  dtype = resnet.resolve_dtype(config.model.dtype)
  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind, dtype, FLAGS.peak_tflops)
  results = []
  for variant in variants:
    row = measure_variant(variant, config, task, placement, num_steps)
    row["mfu"] = row["tflops"] / (peak * placement.num_devices) if peak else None
    results.append(row)
    print(f"  {variant}: {row['img_per_s']:.1f} img/s, compile {row['compile_s']:.1f}s "
          f"(warm {row['compile_warm_s']:.1f}s)", file=sys.stderr)
  full = next((r for r in results if r["variant"] == "full"), results[0])
  out = {"device": device.device_kind, "backend": device.platform,
         "device_count": placement.num_devices, "processes": jax.process_count(),
         "batch_size": phase.batch_size, "eval_batch_size": phase.eval_batch_size,
         "image_size": phase.image_size, "num_classes": task.num_classes,
         "model": config.model.name, "width": config.model.width, "dtype": dtype,
         "conv": conv.resolve(config.model.conv), "parallel": placement.kind,
         "jax": jax.__version__, "peak_tflops_per_device": peak,
         "host_share": full["host_share"], "peak_memory_bytes": _peak_memory(),
         "results": results}
  if FLAGS.startup:  # a first run into an empty compilation cache, then a rerun
    fresh = tempfile.mkdtemp(prefix="tlflax-bench-startup-")
    out["startup_cold_s"] = _startup(config_path, overrides, fresh)
    out["startup_warm_s"] = _startup(config_path, overrides, fresh)
  return out


def step_markdown(out: dict) -> str:
  head = (f"{out['model']} width {out['width']}, {out['dtype']}, conv {out['conv']}, batch "
          f"{out['batch_size']} of {out['image_size']}x{out['image_size']}, "
          f"{out['device_count']} x {out['device']} ({out['backend']}), jax {out['jax']}\n\n"
          "| variant | img/s | ms/step | compile s (cold / warm) | GFLOP/step | TFLOP/s | MFU |\n"
          "|---|---|---|---|---|---|---|\n")
  rows = "".join(
      f"| {r['variant']} | {r['img_per_s']:.1f} | {r['step_ms']:.1f} | {r['compile_s']:.1f} / "
      f"{r['compile_warm_s']:.1f} | {r['flops_per_step'] / 1e9:.2f} | {r['tflops']:.4f} | "
      f"{'%.1f%%' % (100 * r['mfu']) if r['mfu'] is not None else 'n/a'} |\n"
      for r in out["results"])
  tail = f"\nhost share of step time (full): {out['host_share']:.1%}"
  if out.get("peak_memory_bytes"):
    tail += f"; peak device memory {out['peak_memory_bytes'] / 2**30:.2f} GiB"
  if "startup_cold_s" in out:
    tail += (f"\nprocess start to first train step: {out['startup_cold_s']:.1f}s cold, "
             f"{out['startup_warm_s']:.1f}s warm (persistent compilation cache)")
  if "torch" in out:
    t = out["torch"]
    tail += (f"\nPyTorch {t['torch']} ({t['threads']} threads, channels_last, eager): "
             f"{t['img_per_s']:.1f} img/s; tlflax full / PyTorch = {out['torch_ratio']:.2f}x")
  return head + rows + tail + "\n"


# ------------------------------------------------------------------------------------------------
# --what=freeze
# ------------------------------------------------------------------------------------------------


def freeze_benchmark(config, policies, num_steps: int) -> list[dict]:
  """Times the target's train step under each freeze policy: the step a run's `Trainer`
  compiles (the probe uncached, so every policy runs on images)."""
  import jax

  from tlflax import parallel
  from tlflax.train import steps
  placement = parallel.Placement.create(config.parallel)
  task = random_task(config.target, _num_classes(config.target.dataset))
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


def freeze_markdown(rows: list[dict], config) -> str:
  import jax
  t = config.target
  head = (f"{config.model.name} width {config.model.width}, {config.model.dtype}, batch "
          f"{t.batch_size} of {t.image_size}x{t.image_size}, {_num_classes(t.dataset)} classes, "
          f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}\n\n"
          "| freeze | compile s | ms/step | img/s | GFLOP/step (XLA) | speed-up vs first |\n"
          "|---|---|---|---|---|---|\n")
  return head + "".join(
      f"| {r['policy']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['img_per_s']:.0f} "
      f"| {r['gflops_per_step']:.2f} | {r['speedup']:.2f}x |\n" for r in rows)


# ------------------------------------------------------------------------------------------------


def _config_overrides(argv: list[str]) -> list[str]:
  return [a for a in argv if a.startswith("--config.")]


def main(argv):
  del argv
  import jax

  cache_dir = FLAGS.cache_dir or tempfile.mkdtemp(prefix="tlflax-bench-cache-")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    config_lib.validate(FLAGS.config)
    if FLAGS.what == "startup":
      startup_main(FLAGS.config)
      return
    if FLAGS.what == "freeze":
      rows = freeze_benchmark(FLAGS.config, FLAGS.policies, FLAGS.steps)
      print(freeze_markdown(rows, FLAGS.config))
      if FLAGS.out:
        with open(FLAGS.out, "w") as f:
          json.dump(rows, f, indent=2)
      return
    for v in FLAGS.variants:
      if v not in ("full", "linear_probe", "eval") and not v.startswith("stages:"):
        raise UserError(f"unknown variant {v!r}: use full, stages:N, linear_probe or eval")
    out = step_benchmark(FLAGS.config, FLAGS.variants, FLAGS.steps, cli.config_value(sys.argv),
                         _config_overrides(sys.argv))
    if FLAGS["compare-torch"].value:
      out["torch"] = compare_torch(FLAGS.config, out["num_classes"],
                                   FLAGS.torch_python or sys.executable)
      full = next((r for r in out["results"] if r["variant"] == "full"), out["results"][0])
      out["torch_ratio"] = full["img_per_s"] / out["torch"]["img_per_s"]
  except UserError as e:
    print(f"tlflax.bench: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(step_markdown(out))
  if FLAGS.json:
    with open(FLAGS.json, "w") as f:
      json.dump(out, f, indent=2)


def _parse_flags(argv: list[str]) -> list[str]:
  """The flags, `--config` loaded by `cli.parse` (a name or a file, as for `tlflax`)."""
  try:
    return cli.parse(argv)
  except UserError as e:
    print(f"tlflax.bench: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
