"""Benchmarks of the steps training runs, on the current devices, without any dataset.

  python -m tlflax.tools.bench --config=smoke --json=b.json [--compare-torch]
  python -m tlflax.tools.bench --what=freeze --config=...

`--what=step` (default): per variant — `full` (train everything), `stages:N` (stem and the first
N stages frozen), `linear_probe` (the head on cached features) and `eval` — compile seconds, cold
(empty compilation cache) and warm (from the persistent cache), steady-state images per second,
XLA's FLOPs per step, achieved TFLOP/s and MFU where the device's peak is known; the host's share
of step time, peak device memory where the backend reports it, and the seconds from process start
to the first train step with a cold and a warm compilation cache. Every variant runs the steps a
run's `epochs.Trainer` compiles (`measure.bench_trainer`: the config's model, the target's class
count), fed random images of the config's target shape.

`--what=freeze`: the same train step of the target model per freeze policy (`--policies`).
"""

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
from absl import app, flags

from tlflax import parallel
from tlflax.config import cli
from tlflax.errors import UserError
from tlflax.models import conv, resnet
from tlflax.tools import measure
from tlflax.train import checks, steps

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

def _startup(config_path: str, overrides: list[str], cache_dir: str) -> float:
  """Seconds from launching `python -m tlflax.tools.bench --what=startup` to its first train
  step."""
  env = {**os.environ, "TLFLAX_BENCH_T0": repr(time.time())}
  out = subprocess.run([sys.executable, "-m", "tlflax.tools.bench", "--what=startup",
                        f"--config={config_path}", f"--cache_dir={cache_dir}", *overrides],
                       env=env, capture_output=True, text=True, check=False)
  lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
  if out.returncode or not lines:
    raise RuntimeError(f"startup run failed: {out.stderr.strip().splitlines()[-1:]}")
  return json.loads(lines[-1])["first_step_s"]


def startup_main(config) -> None:
  """The child of `_startup`: initialise, compile the full train step (from the cache when
  warm), take one step, print the seconds since the parent launched this process."""

  placement = parallel.Placement.create(config.parallel)
  task = measure.random_task(config.target, measure.num_classes(config.target.dataset), batches=1)
  trainer, state, rows = measure.bench_trainer(config, "none", task, placement)
  state = trainer.ready(0, state, rows)
  jax.block_until_ready(trainer.train_step(state, steps.zero_metrics(),
                                           *trainer.train_args(rows)))
  print(json.dumps({"first_step_s": time.time() - float(os.environ["TLFLAX_BENCH_T0"])}))


def compare_torch(config, num_classes: int, python: str) -> dict:
  """The same train step in PyTorch (tlflax/tools/torch_reference.py), run by `python`."""
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

  placement = parallel.Placement.create(config.parallel)
  phase = config.target
  placement.check_batch(phase.batch_size, "config.target.batch_size")
  task = measure.random_task(phase, measure.num_classes(phase.dataset))
  dtype = resnet.resolve_dtype(config.model.dtype)
  device = jax.devices()[0]
  peak = measure.peak_tflops(device.device_kind, dtype, FLAGS.peak_tflops)
  results = []
  for variant in variants:
    row = measure.measure_variant(variant, config, task, placement, num_steps)
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
         "host_share": full["host_share"], "peak_memory_bytes": measure.peak_memory(),
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


def freeze_markdown(rows: list[dict], config) -> str:
  t = config.target
  head = (f"{config.model.name} width {config.model.width}, {config.model.dtype}, batch "
          f"{t.batch_size} of {t.image_size}x{t.image_size}, "
          f"{measure.num_classes(t.dataset)} classes, "
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

  cache_dir = FLAGS.cache_dir or tempfile.mkdtemp(prefix="tlflax-bench-cache-")
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  try:
    checks.validate(FLAGS.config)
    if FLAGS.what == "startup":
      startup_main(FLAGS.config)
      return
    if FLAGS.what == "freeze":
      rows = measure.freeze_benchmark(FLAGS.config, FLAGS.policies, FLAGS.steps)
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
    print(f"tlflax.tools.bench: error: {e}", file=sys.stderr)
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
    print(f"tlflax.tools.bench: error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
