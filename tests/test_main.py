"""The command line end to end: modes on configs/smoke.py, the files they write, bad inputs."""

import json
import struct

import pytest
from conftest import run_cli

RECORD_KEYS = {"epoch", "step", "train_loss", "test_loss", "test_accuracy", "test_top5", "wall_s",
               "img_per_s"}


def _event_scalars(run_dir, tag):
  """Reads TensorBoard event files (TFRecord framing) without TensorFlow."""
  from tensorboardX.proto import event_pb2
  values = []
  for path in sorted(run_dir.glob("events.out.tfevents.*")):
    raw = path.read_bytes()
    offset = 0
    while offset < len(raw):
      (length,) = struct.unpack("<Q", raw[offset:offset + 8])
      event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      values += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
  return values


def _check_run(run_dir, mode, chance, test_count, stderr):
  """What one finished run of configs/smoke.py holds."""
  config = json.loads((run_dir / "config.json").read_text())
  assert config["mode"] == mode and config["model"]["width"] == 8
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert all(RECORD_KEYS <= set(r) for r in records)
  assert records[-1]["step"] == 3 * (2048 // 64)
  assert records[-1]["test_count"] == test_count
  assert records[-1]["test_accuracy"] > 3 * chance  # it learns something in three epochs
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  tb = _event_scalars(run_dir, "test_accuracy")
  assert [(s, round(v, 5)) for s, v in tb] == [
      (r["step"], round(r["test_accuracy"], 5)) for r in records]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
  assert f"[{mode}] epoch 3/3 step 32/32 loss" in stderr  # plain progress lines


def test_a_folder_that_is_not_a_run_is_not_overwritten(tmp_path):
  run_dir = tmp_path / "scratch"
  run_dir.mkdir()
  (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
  result = run_cli(["--mode=scratch", "--config=configs/smoke.py", f"--workdir={tmp_path}"],
                   tmp_path)
  assert result.returncode == 2
  assert "holds files but no config.json" in result.stderr
  assert (run_dir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
  assert sorted(p.name for p in run_dir.iterdir()) == ["metrics.jsonl"]


def _png_size(path):
  from PIL import Image
  with Image.open(path) as im:
    im.load()
    return im.size


def test_compare_then_transfer_on_the_smoke_config(tmp_path):
  """The study end to end: one pretraining, scratch and transfer for seed 1, the report; a rerun
  reuses everything; --mode=transfer then reuses the pretraining; a stale one is refused."""
  # One seed, not the base config's (the report over several seeds: test_report.py).
  args = ["--mode=compare", "--config=configs/smoke.py", f"--workdir={tmp_path}",
          "--config.seeds=(1,)"]
  result = run_cli(args, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pretraining on synthetic10 first" in result.stderr
  assert result.stderr.count("kept 100 leaves, re-initialised 2") == 1
  report = tmp_path / "report"
  assert _png_size(report / "loss.png")[0] > 300 and _png_size(report / "accuracy.png")[0] > 300
  summary = json.loads((report / "summary.json").read_text())
  exps = summary["experiments"]
  assert exps["scratch"]["runs"] == ["scratch/seed_1"]
  assert exps["transfer"]["best_test_accuracy"]["n"] == 1
  # On the synthetic pair, features from synthetic10 help synthetic100 a lot within 3 epochs.
  assert exps["transfer"]["best_test_accuracy"]["mean"] > 2 * exps["scratch"]["best_test_accuracy"]["mean"]
  assert summary["transfer_reaches_scratch_best_at_epoch"] in (1, 2, 3)
  md = (report / "report.md").read_text()
  assert "Experiment B: transfer | 1 |" in md and "Pretraining on synthetic10" in md
  _check_run(tmp_path / "pretrain", "pretrain", 0.1, 500, result.stderr)
  _check_run(tmp_path / "scratch" / "seed_1", "scratch", 0.01, 1000, result.stderr)
  assert json.loads((tmp_path / "scratch" / "seed_1" / "config.json").read_text())["seed"] == 1
  assert json.loads((tmp_path / "pretrain" / "config.json").read_text())["seed"] == 0

  metrics = (tmp_path / "transfer" / "seed_1" / "metrics.jsonl").read_text()
  (report / "loss.png").unlink()
  again = run_cli(args, tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("reusing it") == 3 and "compiled" not in again.stderr
  assert (tmp_path / "transfer" / "seed_1" / "metrics.jsonl").read_text() == metrics
  assert _png_size(report / "loss.png")[0] > 300

  (report / "loss.png").unlink()
  redraw = run_cli(["--mode=report", f"--workdir={tmp_path}"], tmp_path)
  assert redraw.returncode == 0 and (report / "loss.png").exists()

  # --mode=transfer on the same workdir reuses the pretraining and honours freeze.
  args = ["--mode=transfer", "--config=configs/smoke.py", f"--workdir={tmp_path}",
          "--config.target.epochs=1", "--config.transfer.freeze=stages:3"]
  result = run_cli(args, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no finished pretraining" not in result.stderr
  assert "freeze 'stages:3': 45 of 62 parameter arrays frozen, 15 BatchNorms" in result.stderr
  assert json.loads((tmp_path / "transfer" / "config.json").read_text())["transfer"]["freeze"] == "stages:3"
  other = run_cli(args[:-1] + ["--config.transfer.freeze=backbone"], tmp_path)
  assert other.returncode == 2 and "holds a run with another config (transfer.freeze" in other.stderr
  # The transfer run records where it started: the pretraining, its config's hash, the step.
  from tlflax import rundir
  init = json.loads((tmp_path / "transfer" / "config.json").read_text())["init"]
  pre = json.loads((tmp_path / "pretrain" / "config.json").read_text())
  assert init["run"] == str(tmp_path / "pretrain") and init["step"] == 3 * 2048 // 64
  assert init["checkpoint"] == f"{tmp_path}/pretrain/checkpoints/{init['step']}"
  assert init["config_sha256"] == rundir.config_hash(pre, "pretrain")
  assert json.loads((tmp_path / "transfer" / "summary.json").read_text())["init"] == init
  # A pretraining of another source config is never reused: refused before anything runs.
  before = sorted(str(p) for p in tmp_path.rglob("*"))
  stale = run_cli(args + ["--config.source.epochs=1", "--config.source.learning_rate=0.2"],
                  tmp_path)
  assert stale.returncode == 2
  assert f"{tmp_path}/pretrain holds a run with another config (source.epochs: 3 -> 1; " \
         "source.learning_rate: 0.05 -> 0.2)" in stale.stderr
  assert sorted(str(p) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("args,expected", [
    (["--mode=bogus"], "unknown --mode=bogus"),
    (["--config.target.epochs=abc"], "config.target.epochs"),
    (["--config.target.nokey=1"], "unknown config key nokey"),
    (["--config=configs/missing.py"], "cannot load config file configs/missing.py"),
    (["--config.target.batch_size=100000"], "batch_size 100000 exceeds"),
    (["--config.target.epochs=0"], "config.target.epochs must be positive"),
    (["--config.target.train_split=val"], "bad split 'val'"),
    (["--config.model.name=vgg"], "unknown model.name 'vgg'"),
    (["stray"], "unexpected arguments stray"),
    (["--mode=transfer", "--config.transfer.freeze=stages:9"], "unknown freeze policy 'stages:9'"),
    (["--mode=transfer", "--config.transfer.init_from=/nonexistent"], "holds no tlflax checkpoint"),
    (["--mode=report"], "holds no scratch or transfer runs"),
    (["--bogus=1"], "Unknown command line flag 'bogus'"),
    (["--mode=transfer", "--config.transfer.init_from=tests"], "tests holds no tlflax checkpoint"),
])
def test_bad_inputs_end_in_one_line_and_exit_2(tmp_path, args, expected):
  _assert_one_line_error(tmp_path, args, expected)


@pytest.mark.parametrize("env,args,expected", [
    ({"TLFLAX_ACCEL": "cuda12"}, [], "TLFLAX_ACCEL=cuda12 but jax finds only the CPU"),
    ({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"},
     ["--config.target.batch_size=100"],
     "batch_size=100 does not split evenly over 8 devices: use 96 or 104"),
    ({}, ["--coordinator=127.0.0.1:1"], "needs --num_processes=N"),
    ({}, ["--config.model.dtype=float16"], "model.dtype 'float16' is not supported"),
])
def test_device_and_precision_mistakes_end_in_one_line_and_exit_2(tmp_path, env, args, expected):
  _assert_one_line_error(tmp_path, args, expected, env)


def _assert_one_line_error(tmp_path, args, expected, env=None):
  base = [] if any(a.startswith("--mode=") for a in args) else ["--mode=scratch"]
  base.append(f"--workdir={tmp_path}")
  if not any(a.startswith("--config=") for a in args):
    base.append("--config=configs/smoke.py")
  result = run_cli(base + args, tmp_path, timeout=120, env=env)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("tlflax: error:")]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_a_failed_start_leaves_no_folder_and_verbose_shows_the_traceback(tmp_path, tiny_scratch):
  from conftest import TINY_ARGS
  failed = run_cli(TINY_ARGS + [f"--workdir={tmp_path}", "--config.target.dataset=no_such_dataset"],
                   tmp_path)
  assert failed.returncode == 2 and "no_such_dataset" in failed.stderr
  assert not (tmp_path / "scratch").exists()
  # A changed config on a finished run: refused, the run untouched; --verbose adds the traceback.
  workdir, _ = tiny_scratch
  before = _tree(workdir)
  again = run_cli(TINY_ARGS + [f"--workdir={workdir}", "--config.target.epochs=3", "--verbose"],
                  tmp_path)
  assert again.returncode == 2 and "Traceback" in again.stderr
  last = again.stderr.strip().splitlines()[-1]
  assert last.startswith("tlflax: error: ") and "target.epochs: 2 -> 3" in last
  assert _tree(workdir) == before


def _smoke(**overrides):
  import importlib.util
  spec = importlib.util.spec_from_file_location("smoke", "configs/smoke.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[leaf] = value
  return config


def _tree(root):
  return sorted((str(p.relative_to(root)), p.read_bytes() if p.is_file() else None)
                for p in root.rglob("*"))


@pytest.mark.parametrize("mode,overrides,expected", [
    ("transfer", {"transfer.freeze": ("[",)}, r"'\[' is not a valid regex"),
    ("transfer", {"transfer.freeze": ("^nothing/",)}, "freeze regex '\\^nothing/' matches no"),
    ("scratch", {"target.examples_per_class": 1000}, "examples_per_class=1000 but class 0"),
    ("scratch", {"target.label_smoothing": 1.5}, "label_smoothing must be in"),
    ("scratch", {"checkpoint.every_steps": -1}, "every_steps must be >= 0"),
    ("transfer", {"transfer.init_from": "UNFINISHED"}, "is a run that has not finished"),
    ("transfer", {"transfer.init_from": "CORRUPT"}, "cannot read checkpoint|has no 'params'"),
])
def test_bad_values_are_user_errors_that_change_nothing_on_disk(tmp_path, mode, overrides,
                                                                expected):
  from tlflax import main
  from tlflax.errors import UserError
  source = tmp_path / "source"
  (source / "checkpoints" / "4" / "params").mkdir(parents=True)
  (source / "checkpoints" / "4" / "params" / "garbage").write_bytes(b"\0" * 64)
  (source / "config.json").write_text('{"mode": "pretrain"}')
  if overrides.get("transfer.init_from") == "CORRUPT":
    (source / "summary.json").write_text("{}")
  if "transfer.init_from" in overrides:
    overrides["transfer.init_from"] = str(source)
  workdir = tmp_path / "work"
  (workdir / "other").mkdir(parents=True)
  (workdir / "other" / "metrics.jsonl").write_text('{"epoch": 1}\n')
  before = _tree(tmp_path)
  with pytest.raises(UserError, match=expected):
    main.run(mode, _smoke(**{"transfer.init_from": "", **overrides}), str(workdir))
  assert _tree(tmp_path) == before
