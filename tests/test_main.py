"""The command line end to end: modes on configs/smoke.py, the files they write, bad inputs."""

import json
import struct

import numpy as np
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


def _check_run(run_dir, mode, chance, test_count, stderr, epochs=3):
  """What one finished run of configs/smoke.py holds (used by test_study.py)."""
  config = json.loads((run_dir / "config.json").read_text())
  assert config["mode"] == mode and config["model"]["width"] == 8
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == list(range(1, epochs + 1))
  assert all(RECORD_KEYS <= set(r) for r in records)
  assert records[-1]["step"] == epochs * (2048 // 64)
  assert records[-1]["test_count"] == test_count
  assert records[-1]["test_accuracy"] > 3 * chance  # it learns something in a few epochs
  assert epochs == 1 or records[-1]["train_loss"] < records[0]["train_loss"]
  tb = _event_scalars(run_dir, "test_accuracy")
  assert [(s, round(v, 5)) for s, v in tb] == [
      (r["step"], round(r["test_accuracy"], 5)) for r in records]
  # Training scalars every log_every_steps (8): 4 windows an epoch, whose mean is the epoch's.
  windows = [json.loads(line) for line in (run_dir / "train_steps.jsonl").read_text().splitlines()]
  assert [w["step"] for w in windows] == list(range(8, epochs * 32 + 1, 8))
  assert np.mean([w["train_loss"] for w in windows[-4:]]) == pytest.approx(
      records[-1]["train_loss"], rel=1e-5)
  assert [s for s, _ in _event_scalars(run_dir, "step/learning_rate")] == [w["step"] for w in windows]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
  # wall_s counts the run's work from its start: loading (and restoring the source) included.
  assert summary["load_s"] > 0
  assert summary["wall_s"] > summary["load_s"] + summary["compile_s"] + summary["train_s"]
  assert f"[{mode}] epoch {epochs}/{epochs} step 32/32 loss" in stderr  # plain progress lines


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


@pytest.mark.parametrize("args,expected", [
    (["--mode=bogus"], "unknown --mode=bogus"),
    (["--config.target.epochs=abc"], "config.target.epochs"),
    (["--config.target.nokey=1"], "unknown config key target.nokey"),
    (["--config.target.epoch=3"], ("unknown config key target.epoch in --config.target.epoch=... "
                                  "(closest: target.epochs")),
    (["--config=smok"], ("no config named 'smok' (did you mean 'smoke'?): use one of "
                        "cifar10_to_cifar100, cifar10_to_cifar100_arms, imagenet_to_cifar100, "
                        "lr_sweep, smoke")),
    (["--config=smoke:bogus"], "config smoke takes no argument (got :bogus): use --config=smoke"),
    (["--config.data.pipeline=disk"], "config.data.pipeline must be one of auto, device, stream"),
    (["--config.target.resize=pad"], "config.target.resize must be one of squash, center_crop"),
    # The dataset's own error, not one about the split being read when it was found missing.
    (["--config.target.dataset=folder:/nonexistent"],
     "tlflax: error: dataset folder /nonexistent does not exist"),
    (["--config=configs/missing.py"], "cannot load config file configs/missing.py"),
    (["--config.target.batch_size=100000"], "batch_size 100000 exceeds"),
    (["--config.target.epochs=0"], "config.target.epochs must be positive"),
    (["--config.target.train_split=val"], "in config.target.train_split: bad split 'val'"),
    (["--config.target.val_split=train[2048:2048]"],
     "in config.target.val_split: split 'train[2048:2048]' is empty: widen the slice"),
    (["--config.model.name=vgg"], "unknown model.name 'vgg'"),
    (["stray"], "unexpected arguments stray"),
    (["--mode=transfer", "--config.transfer.freeze=stages:9"], "unknown freeze policy 'stages:9'"),
    (["--mode=transfer", "--config.transfer.init_from=/nonexistent"], "holds no tlflax checkpoint"),
    (["--mode=report"], "holds no scratch or transfer runs"),
    (["--mode=evaluate"], "--mode=evaluate needs --model=PATH"),
    (["--mode=predict", "--model=tests"], "--mode=predict needs --input=PATH"),
    (["--mode=predict", "--model=tests", "--input=/nonexistent/*.png"],
     "--input=/nonexistent/*.png matches no image file"),
    (["--mode=evaluate", "--model=/nonexistent"], "/nonexistent holds no tlflax checkpoint"),
    (["--mode=evaluate", "--model=tests", "--config.evaluate.checkpoint=last"],
     "config.evaluate.checkpoint must be 'latest' or 'best'"),
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
    ({}, ["--config.model.dtype=float64"], "unknown model.dtype 'float64'"),
    ({}, ["--config.target.accumulate_steps=0"],
     ("config.target.accumulate_steps must be positive, got 0: set "
     "--config.target.accumulate_steps")),
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

  from tlflax import config as config_lib
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
      node[leaf] = config_lib.arms_config(value) if key == "arms" else value
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
    ("compare", {"arms": {"full": {}, "probe": {"freez": "backbone"}}},
     "config.arms.probe overrides transfer.freez, which does not exist"),
    ("compare", {"arms": {"a_b": {}}}, "arm named 'a_b'"),
    ("compare", {"arms": {"x": {"freeze": "stages:9"}}}, "in config.arms.x: unknown freeze"),
    ("compare", {"arms": {"x": {"freeze": ("^nothing/",)}}},
     "in config.arms.x: freeze regex '\\^nothing/' matches no"),
    ("compare", {"label_budgets": (5, -1)}, "config.label_budgets holds -1"),
    ("transfer", {"transfer.normalize": "imagenet"}, "normalize must be 'source' or 'target'"),
    ("scratch", {"target.min_steps": -5}, "config.target.min_steps must be >= 0"),
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
