"""Accelerator figures and checks in one call, with the current interpreter as it is (no venv,
no install).

  python3 benchmarks/device_figures.py --out=DIR [--rehearse] [--budget_s=420] [--parts=...]

Run by `benchmarks/gpu.sh --here DIR`, which first installs the carried wheels (`.whl/`) into a
target folder on PYTHONPATH. These parts, in this order (`--parts` picks some, e.g. for a rerun of
what a first call skipped), each skipped once `--budget_s` is spent:
  bench     `python -m tlflax.tools.bench` at batch 512: full, stages:2, the cached linear probe,
            eval (img/s, TFLOP/s, MFU, compile seconds), bfloat16, on the CIFAR ResNet-18;
  smoke     the smoke study end to end on the device (`--mode=compare --config=smoke`, one
            seed, the transfer arm with stages:2 frozen): the report is written, and every frozen
            parameter and frozen BatchNorm statistic of each transfer run's last checkpoint
            equals, bitwise, the source checkpoint it started from, while the trainable ones moved;
  tests     a slice of the test suite under this machine's jax: steps, freezing and checkpoints
            on the device (tests/test_train.py, test_transfer.py, test_checkpoint.py), then the
            8-device data-parallel checks of tests/test_parallel.py on forced CPU devices
            (one accelerator cannot hold 8 shards), with the interpreter's pytest;
  epochs    synthetic CIFAR-size epochs (50,000 32x32 images, `configs/cifar10_to_cifar100.py`
            with the synthetic datasets, bfloat16, the config's batch) of the pretraining,
            scratch, full transfer, transfer with stages:2 frozen, and the cached probe, each a
            `tlflax.main` run of 2 epochs: the second is the steady-state epoch, the first
            carries the start-up;
  bench_large  the bench at batch 1024.
Then the seed's whole study (pretraining 30 epochs, scratch 100, transfer 100) projected from
the measured runs: each phase's time up to its first evaluation (loading, compiling, the first
epoch), then every further epoch as long as the measured second one from evaluation to
evaluation (checkpoint, training, evaluation).

Writes DIR/figures.json (everything), DIR/figures.txt (a summary), DIR/bench_<B>.json,
DIR/smoke_report.md and DIR/log.txt: at most 6 files (the runs go to --work, default a temporary
folder removed at the end). `--rehearse`: the same on this machine's
CPU with tiny sizes (ResNet-10 of width 4, 16x16 images, a 256-image split, one test of each
test file), so the device call is not the first time this runs.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

REPO = pathlib.Path(__file__).resolve().parent.parent
STUDY_EPOCHS = {"pretrain": 30, "scratch": 100, "transfer": 100}  # configs/cifar10_to_cifar100.py

# The study's config, its datasets replaced by the synthetic pair of the same size, one epoch.
EPOCH = ["--config=cifar10_to_cifar100", "--config.model.dtype=bfloat16",
         "--config.source.dataset=synthetic10", "--config.target.dataset=synthetic100",
         "--config.source.epochs=2", "--config.target.epochs=2", "--config.target.min_steps=0",
         "--config.log_every_steps=100"]
BENCH = ["--config=cifar10_to_cifar100", "--config.model.dtype=bfloat16",
         "--config.target.eval_batch_size=1024", "--steps=20", "--nostartup"]
# --rehearse: the same calls, shrunk to seconds on a CPU.
TINY = ["--config.model.name=resnet10", "--config.model.width=4"] + [
    f"--config.{p}.{k}" for p in ("source", "target") for k in (
        "image_size=16", "crop_padding=2", "batch_size=16", "eval_batch_size=32",
        "train_split=train[:256]", "test_split=test[:64]")]
# The smoke study of the README with one seed, its transfer arm with the stem and two stages
# frozen.
SMOKE = ["-m", "tlflax.main", "--mode=compare", "--config=smoke", "--config.seeds=(0,)",
         "--config.transfer.freeze=stages:2"]
TINY_SMOKE = ["--config.model.name=resnet10", "--config.model.width=4",
              "--config.target.val_split=train[256:320]"] + [
    f"--config.{p}.{k}" for p in ("source", "target") for k in (
        "image_size=16", "crop_padding=2", "epochs=2", "train_split=train[:256]",
        "test_split=test[:64]")]
# name: (pytest arguments, environment). Steps, freezing and checkpoints on the device; the
# 8-device checks on forced CPU devices (the machine has one accelerator).
TESTS = {"tests_device": (["tests/test_train.py", "tests/test_transfer.py",
                           "tests/test_checkpoint.py"], {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),
         "tests_cpu8": (["tests/test_parallel.py", "-k", "not two_processes"],
                        {"JAX_PLATFORMS": "cpu"})}
# --rehearse: one test of each kind, so the mechanics run without repeating the suite.
TINY_TESTS = {"tests_device": ["tests/test_transfer.py", "-k", "hold_no_optimizer_state"],
              "tests_cpu8": ["tests/test_parallel.py", "-k", "placement_on_one_device"]}
PARTS = ("bench", "smoke", "tests", "epochs", "bench_large")
TINY_BENCH = ["--config.model.name=resnet10", "--config.model.width=4",
              "--config.target.image_size=16", "--config.target.crop_padding=2",
              "--config.target.eval_batch_size=32", "--steps=2", "--peak_tflops=0.1"]


class Figures:
  """What the call measured so far, written out after every part (a timeout keeps the rest)."""

  def __init__(self, out: pathlib.Path, budget_s: float, rehearse: bool):
    self.out, self.budget_s, self.t0 = out, budget_s, time.perf_counter()
    self.data = {"rehearse": rehearse, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "machine": machine(), "bench": {}, "smoke": {}, "tests": {}, "epochs": {},
                 "skipped": [], "failed": {}}
    self.output = ""  # what the last `run` printed

  def left(self) -> float:
    return self.budget_s - (time.perf_counter() - self.t0)

  def run(self, name: str, args: list[str], env: dict | None = None) -> bool:
    """Runs `python3 ARGS` from the repository root within the budget, with `env` added to the
    environment; its output goes to log.txt and `self.output`. False (and the reason recorded)
    when it failed or the budget ran out."""
    self.output = ""
    if self.left() < 20:
      self.data["skipped"].append(name)
      return False
    t0 = time.perf_counter()
    try:
      done = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            timeout=self.left(), check=False, env={**os.environ, **(env or {})})
      code, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
      code, text = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
      text = text.decode() if isinstance(text, bytes) else text
    with open(self.out / "log.txt", "a") as f:
      f.write(f"==== {name}: exit {code} after {time.perf_counter() - t0:.1f}s\n{text[-20000:]}\n")
    self.output = text
    if code != 0:
      self.data["failed"][name] = f"exit {code}: " + (text.strip().splitlines() or [""])[-1]
    return code == 0

  def save(self) -> None:
    self.data["elapsed_s"] = time.perf_counter() - self.t0
    (self.out / "figures.json").write_text(json.dumps(self.data, indent=2))
    (self.out / "figures.txt").write_text(summary(self.data))


_MACHINE = """
import importlib.metadata as md, importlib.util, json, platform
import jax
def version(name):
  try:
    return md.version(name)
  except md.PackageNotFoundError:
    return None
def origin(name):
  try:
    return getattr(importlib.util.find_spec(name), "origin", None)
  except ModuleNotFoundError:
    return None
device = jax.devices()[0]
print(json.dumps({
    "python": platform.python_version(), "backend": device.platform,
    "device_kind": device.device_kind, "device_count": jax.device_count(),
    "versions": {n: version(n) for n in ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin",
                                         "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                                         "ml-collections", "tensorboardX", "pytest")},
    "modules": {n: origin(n) for n in ("ml_collections", "tensorboardX", "pytest", "tlflax",
                                       "tensorflow")}}))
"""


def machine() -> dict:
  """The interpreter, the jax stack, where tlflax and the carried packages are imported from, and
  the devices, read in a child process (this one must not hold the accelerator)."""
  done = subprocess.run([sys.executable, "-c", _MACHINE], cwd=REPO, capture_output=True,
                        text=True, check=False)
  lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
  if done.returncode or not lines:
    raise SystemExit(f"device_figures: cannot start jax here: {done.stderr.strip()[-2000:]}")
  return json.loads(lines[-1])


def bench(fig: Figures, batch: int, rehearse: bool) -> None:
  path = fig.out / f"bench_{batch}.json"
  args = ["-m", "tlflax.tools.bench", *BENCH, f"--config.target.batch_size={batch}",
          f"--json={path}"]
  if rehearse:
    args = ["-m", "tlflax.tools.bench", "--config=smoke", "--config.model.dtype=bfloat16",
            *TINY_BENCH, f"--config.target.batch_size={batch}", "--nostartup", f"--json={path}"]
  if fig.run(f"bench_{batch}", args):
    b = json.loads(path.read_text())
    fig.data["bench"][str(batch)] = {
        "device": b["device"], "dtype": b["dtype"], "jax": b["jax"],
        "peak_tflops_per_device": b["peak_tflops_per_device"],
        "peak_memory_bytes": b["peak_memory_bytes"], "host_share": b["host_share"],
        "results": {r["variant"]: {k: r.get(k) for k in (
            "img_per_s", "step_ms", "tflops", "mfu", "compile_s", "compile_warm_s",
            "flops_per_step", "features_s")} for r in b["results"]}}
  fig.save()


def _summary(run_dir: pathlib.Path) -> dict:
  """One run of two epochs: the second epoch's speed, its wall-clock from evaluation to
  evaluation, and the time up to the first evaluation."""
  s = json.loads((run_dir / "summary.json").read_text())
  first, second = (json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
                   if '"event"' not in x)
  return {"dataset": s["dataset"], "train_examples": s["train_examples"],
          "batch_size": s["train_examples"] // s["steps_per_epoch"],
          "epoch_s": second["epoch_s"], "img_per_s": second["img_per_s"],
          "first_epoch_s": first["epoch_s"], "epoch_wall_s": second["wall_s"] - first["wall_s"],
          "until_first_eval_s": first["wall_s"], "wall_s": s["wall_s"], "load_s": s["load_s"],
          "compile_s": s["compile_s"], "features_s": s.get("features_s", 0.0),
          "test_accuracy": second["test_accuracy"]}


def epochs(fig: Figures, work: pathlib.Path, rehearse: bool) -> None:
  """The pretraining and full transfer (one call), scratch, stages:2, the cached probe."""
  common = ["-m", "tlflax.main", *EPOCH, *(TINY if rehearse else [])]
  pre = work / "study" / "pretrain"
  runs = [("transfer_full", ["--mode=transfer", f"--workdir={work / 'study'}"], "study/transfer"),
          ("scratch", ["--mode=scratch", f"--workdir={work / 'study'}"], "study/scratch"),
          ("transfer_stages2", ["--mode=transfer", f"--workdir={work / 'stages2'}",
                                "--config.transfer.freeze=stages:2",
                                f"--config.transfer.init_from={pre}"], "stages2/transfer"),
          ("probe", ["--mode=transfer", f"--workdir={work / 'probe'}",
                     "--config.transfer.freeze=backbone",
                     f"--config.transfer.init_from={pre}"], "probe/transfer")]
  for name, args, folder in runs:
    if fig.run(f"epoch_{name}", common + args):
      if name == "transfer_full":
        fig.data["epochs"]["pretrain"] = _summary(pre)
      fig.data["epochs"][name] = _summary(work / folder)
    fig.save()


def smoke(fig: Figures, work: pathlib.Path, rehearse: bool) -> None:
  """The smoke study on the device, its report, and the frozen layers checked bitwise."""
  study = work / "smoke"
  t0 = time.perf_counter()
  if fig.run("smoke", [*SMOKE, f"--workdir={study}", *(TINY_SMOKE if rehearse else [])]):
    report = study / "report" / "report.md"
    md = report.read_text() if report.exists() else ""
    transfer = json.loads(next(study.glob("transfer_*/seed_*/summary.json")).read_text())
    fig.data["smoke"] = {
        "wall_s": time.perf_counter() - t0, "backend": transfer["backend"],
        "device_kind": transfer["device_kind"], "dtype": transfer["dtype"],
        "report": bool(md),
        "verdicts": [x for x in md.splitlines() if x[:3] in ("1. ", "2. ", "3. ")]}
    if md:
      shutil.copy(report, fig.out / "smoke_report.md")
    else:
      fig.data["failed"]["smoke_report"] = f"no {report}"
    if fig.run("smoke_frozen", [__file__, f"--frozen_check={study}"]):
      runs = json.loads(fig.output.strip().splitlines()[-1])
      fig.data["smoke"]["frozen"] = runs
      moved = [r for r, v in runs.items()
               if v["frozen_params_equal"] != v["frozen_params"] or not v["frozen_params"]
               or v["frozen_bn_stats_equal"] != v["frozen_bn_stats"]
               or not v["trainable_params_moved"]]
      if not runs or moved:
        fig.data["failed"]["smoke_frozen"] = f"frozen layers changed or nothing trained in {moved}"
  fig.save()


def frozen_check(study: str) -> dict:
  """Per transfer run of the study `study`: how many of its frozen parameters and frozen
  BatchNorm statistics in its last checkpoint equal, bitwise, those of the source checkpoint it
  started from, and how many trainable parameters moved. (Run in a child process: the parent
  never imports jax.)"""
  import numpy as np

  from tlflax.io import checkpoint
  from tlflax.models import resnet
  from tlflax.train import transfer

  def same(a, b) -> bool:
    return a.shape == b.shape and bool(np.array_equal(np.asarray(a), np.asarray(b)))

  runs = {}
  for run_dir in sorted(pathlib.Path(study).glob("transfer_*/seed_*")):
    summary = json.loads((run_dir / "summary.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    source, _ = checkpoint.restore_variables(summary["init"]["checkpoint"])
    final, name = checkpoint.restore_variables(str(run_dir))
    stages = resnet.num_stages(cfg["model"]["name"])
    labels = transfer.trainable_labels(final["params"], cfg["transfer"]["freeze"], stages)
    layout = transfer.frozen_layout(labels, stages, cfg["transfer"]["frozen_bn"])
    frozen_bn = set(layout["frozen_bn"])
    new, old = transfer.flatten(final["params"]), transfer.flatten(source["params"])
    label = transfer.flatten(labels)
    frozen = [k for k in new if label[k] == transfer.FROZEN]
    trainable = [k for k in new if label[k] != transfer.FROZEN]
    new_bn, old_bn = transfer.flatten(final["batch_stats"]), transfer.flatten(source["batch_stats"])
    frozen_stats = [k for k in new_bn if k.rsplit("/", 1)[0] in frozen_bn]
    runs[str(run_dir.relative_to(study))] = {
        "checkpoint": name, "source": summary["init"]["checkpoint"],
        "freeze": cfg["transfer"]["freeze"], "frozen_params": len(frozen),
        "frozen_params_equal": sum(same(new[k], old[k]) for k in frozen),
        "trainable_params": len(trainable),
        "trainable_params_moved": sum(not same(new[k], old[k]) for k in trainable),
        "frozen_bn_stats": len(frozen_stats),
        "frozen_bn_stats_equal": sum(same(new_bn[k], old_bn[k]) for k in frozen_stats)}
  return runs


def _junit(path: pathlib.Path) -> dict:
  """Counts, seconds and the failing tests (first line of each message) of a pytest junit file."""
  root = ET.parse(path).getroot()
  suite = root if root.tag == "testsuite" else root.find("testsuite")
  failing = {}
  for case in suite.iter("testcase"):
    for problem in (case.find("failure"), case.find("error")):
      if problem is not None:
        message = (problem.get("message") or "").strip().splitlines() or [""]
        failing[f"{case.get('classname')}::{case.get('name')}"] = message[0][:300]
  return {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")} | {
      "time_s": float(suite.get("time", 0.0)), "failing": failing}


def tests(fig: Figures, work: pathlib.Path, rehearse: bool) -> None:
  """The test slice under this machine's jax (see TESTS), a junit summary of each."""
  for name, (args, env) in TESTS.items():
    junit = work / f"{name}.xml"
    selected = TINY_TESTS[name] if rehearse else args
    fig.run(name, ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                   *selected], env)
    if junit.exists():
      fig.data["tests"][name] = _junit(junit)
    fig.save()


def project(epochs: dict) -> dict | None:
  """The seed's study (pretraining 30 epochs, scratch 100, transfer 100) from the measured runs:
  each phase's time up to its first evaluation, then its other epochs at the second epoch's
  wall-clock (checkpoint, training, evaluation)."""
  parts = {"pretrain": "pretrain", "scratch": "scratch", "transfer": "transfer_full"}
  if not all(run in epochs for run in parts.values()):
    return None
  out = {}
  for phase, run in parts.items():
    e, n = epochs[run], STUDY_EPOCHS[phase]
    out[phase] = {"epochs": n, "until_first_eval_s": e["until_first_eval_s"],
                  "epoch_wall_s": e["epoch_wall_s"],
                  "total_s": e["until_first_eval_s"] + (n - 1) * e["epoch_wall_s"]}
  out["total_s"] = sum(p["total_s"] for p in out.values())
  return out


def summary(d: dict) -> str:
  m = d["machine"]
  lines = [f"{m['device_count']} x {m['device_kind']} ({m['backend']}), python {m['python']}, "
           f"jax {m['versions']['jax']}, flax {m['versions']['flax']}"
           + (" [rehearsal: tiny sizes]" if d["rehearse"] else ""), f"date: {d['date']}"]
  for batch, b in d["bench"].items():
    lines.append(f"bench, batch {batch}, {b['dtype']}:")
    for variant, r in b["results"].items():
      mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
      lines.append(f"  {variant:13s} {r['img_per_s']:10.0f} img/s  {r['tflops']:8.2f} TFLOP/s  "
                   f"MFU {mfu:>6s}  compile {r['compile_s']:.1f}s")
  sm = d.get("smoke")
  if sm:
    lines.append(f"smoke study on {sm['device_kind']} ({sm['backend']}, {sm['dtype']}): "
                 f"{sm['wall_s']:.1f}s, report {'written' if sm['report'] else 'MISSING'}")
    for run, v in sm.get("frozen", {}).items():
      lines.append(f"  {run} ({v['freeze']}): frozen bitwise equal {v['frozen_params_equal']}/"
                   f"{v['frozen_params']} params, {v['frozen_bn_stats_equal']}/"
                   f"{v['frozen_bn_stats']} BatchNorm statistics; trainable moved "
                   f"{v['trainable_params_moved']}/{v['trainable_params']}")
  for name, t in d.get("tests", {}).items():
    lines.append(f"{name}: {t['tests'] - t['failures'] - t['errors'] - t['skipped']} passed, "
                 f"{t['failures'] + t['errors']} failed, {t['skipped']} skipped in "
                 f"{t['time_s']:.0f}s" + "".join(f"\n  FAILED {k}: {v}"
                                                for k, v in t["failing"].items()))
  for name, e in d["epochs"].items():
    lines.append(f"epoch {name:16s} {e['epoch_s']:7.2f}s training ({e['img_per_s']:.0f} img/s, "
                 f"batch {e['batch_size']}), {e['epoch_wall_s']:.2f}s evaluation to evaluation; "
                 f"first evaluation after {e['until_first_eval_s']:.1f}s (load {e['load_s']:.1f}s,"
                 f" compile {e['compile_s']:.1f}s, features {e['features_s']:.1f}s)")
  p = d.get("projection")
  if p:
    lines.append("study projected (pretrain 30 + scratch 100 + transfer 100 epochs): "
                 f"{p['total_s'] / 60:.1f} min = " + " + ".join(
                     f"{k} {v['total_s'] / 60:.1f}" for k, v in p.items() if k != "total_s"))
  lines += [f"skipped (budget): {', '.join(d['skipped'])}"] if d["skipped"] else []
  lines += [f"FAILED {k}: {v}" for k, v in d["failed"].items()]
  return "\n".join(lines) + "\n"


_ABSENT = """
import sys
for name in ("tensorflow", "tensorflow_datasets"):
  sys.modules[name] = None  # import fails, importlib.util.find_spec says None: as if absent
"""


def _without_tensorflow() -> None:
  """--rehearse: the child processes cannot import TensorFlow or tfds, as on the device."""
  folder = tempfile.mkdtemp(prefix="tlflax-no-tf-")
  pathlib.Path(folder, "sitecustomize.py").write_text(_ABSENT)
  os.environ["PYTHONPATH"] = os.pathsep.join(
      [folder] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", help="folder for the figures (created)")
  parser.add_argument("--rehearse", action="store_true", help="tiny sizes, on this machine")
  parser.add_argument("--budget_s", type=float, default=420.0,
                      help="seconds after which the remaining parts are skipped")
  parser.add_argument("--parts", default=",".join(PARTS),
                      help=f"the parts to run, comma-separated, of {','.join(PARTS)}")
  parser.add_argument("--work",
                      help="folder for the runs, kept (default: a temporary one, removed)")
  parser.add_argument("--frozen_check", help=argparse.SUPPRESS)  # the child of `smoke`
  args = parser.parse_args()
  if args.frozen_check:
    print(json.dumps(frozen_check(args.frozen_check)))
    return 0
  parts = [x for x in args.parts.split(",") if x]
  unknown = [x for x in parts if x not in PARTS]
  problem = (f"--parts {args.parts!r} names {unknown or 'nothing'}" if unknown or not parts
             else "no --out" if not args.out else "")
  if problem:
    print(f"device_figures: error: {problem}: use --out=DIR and --parts from {','.join(PARTS)}",
          file=sys.stderr)
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  if args.rehearse:
    _without_tensorflow()
  fig = Figures(out, args.budget_s, args.rehearse)
  fig.save()
  small, large = (16, 32) if args.rehearse else (512, 1024)
  with (contextlib.nullcontext(args.work) if args.work
        else tempfile.TemporaryDirectory(prefix="tlflax-figures-")) as folder:
    work, r = pathlib.Path(folder), args.rehearse
    steps = {"bench": lambda: bench(fig, small, r), "smoke": lambda: smoke(fig, work, r),
             "tests": lambda: tests(fig, work, r), "epochs": lambda: epochs(fig, work, r),
             "bench_large": lambda: bench(fig, large, r)}
    for part in PARTS:
      if part in parts:
        steps[part]()
  fig.data["projection"] = project(fig.data["epochs"])
  fig.save()
  print(summary(fig.data), end="")
  return 1 if fig.data["failed"] else 0


if __name__ == "__main__":
  os.environ.setdefault("PYTHONUNBUFFERED", "1")
  sys.exit(main())
