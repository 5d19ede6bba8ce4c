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


@pytest.mark.parametrize("mode,chance", [("pretrain", 0.1), ("scratch", 0.01)])
def test_modes_run_end_to_end_on_the_smoke_config(tmp_path, mode, chance):
  result = run_cli([f"--mode={mode}", "--config=configs/smoke.py", f"--workdir={tmp_path}"],
                   tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  run_dir = tmp_path / mode
  config = json.loads((run_dir / "config.json").read_text())
  assert config["mode"] == mode and config["model"]["width"] == 8
  records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3]
  assert all(RECORD_KEYS <= set(r) for r in records)
  assert records[-1]["step"] == 3 * (2048 // 64)
  assert records[-1]["test_count"] == (500 if mode == "pretrain" else 1000)
  assert records[-1]["test_accuracy"] > 3 * chance  # it learns something in three epochs
  assert records[-1]["train_loss"] < records[0]["train_loss"]
  tb = _event_scalars(run_dir, "test_accuracy")
  assert [(s, round(v, 5)) for s, v in tb] == [
      (r["step"], round(r["test_accuracy"], 5)) for r in records]
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["final"]["test_accuracy"] == records[-1]["test_accuracy"]
  assert f"[{mode}] epoch 3/3 step 32/32 loss" in result.stderr  # plain progress lines


def test_a_finished_run_is_not_overwritten(tmp_path):
  run_dir = tmp_path / "scratch"
  run_dir.mkdir()
  (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
  result = run_cli(["--mode=scratch", "--config=configs/smoke.py", f"--workdir={tmp_path}"],
                   tmp_path)
  assert result.returncode == 2
  assert "already holds a run" in result.stderr
  assert (run_dir / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


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
])
def test_bad_inputs_end_in_one_line_and_exit_2(tmp_path, args, expected):
  base = ["--mode=scratch", f"--workdir={tmp_path}"]
  if not any(a.startswith("--config=") for a in args):
    base.append("--config=configs/smoke.py")
  result = run_cli(base + args, tmp_path, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("tlflax: error:")]
  assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
