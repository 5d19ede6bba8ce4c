"""Weights & Biases tracking, in wandb's offline mode: nothing leaves the machine; what it would
send is read back from the offline run's .wandb file."""

import json
import pathlib

import pytest
from conftest import SECRET, SECRET_ENV, TINY_ARGS, assert_nothing_secret, run_cli

pytest.importorskip("wandb")


def wandb_records(path: pathlib.Path) -> list:
  """The records of a .wandb file: wandb's leveldb-style log (a 7-byte header ':W&B', magic,
  version; then 32 KiB blocks of chunks: crc32, length (2 bytes, little-endian), type (1 full,
  2 first, 3 middle, 4 last)), each record a protobuf `Record`."""
  from wandb.proto import wandb_internal_pb2 as pb
  raw, block, pos = path.read_bytes(), 32768, 7
  assert raw[:4] == b":W&B"
  out, pending = [], b""
  while pos + 7 <= len(raw):
    left = block - pos % block
    if left < 7:
      pos += left
      continue
    length, kind = int.from_bytes(raw[pos + 4:pos + 6], "little"), raw[pos + 6]
    if kind == 0:
      break
    data, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
    pending = data if kind in (1, 2) else pending + data
    if kind in (1, 4):
      record = pb.Record()
      record.ParseFromString(pending)
      out.append(record)
  return out


def _offline_run(wandb_dir: pathlib.Path, name: str):
  """(run record, history rows {key: value}, summary) of the offline run whose display name is
  `name`."""
  for path in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
    records = wandb_records(path)
    runs = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    if runs and runs[0].display_name == name:
      history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                  for i in r.history.item}
                 for r in records if r.WhichOneof("record_type") == "history"]
      summary = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                 for r in records if r.WhichOneof("record_type") == "summary"
                 for i in r.summary.update}
      return runs[0], history, summary
  raise AssertionError(f"no offline wandb run named {name} under {wandb_dir}")


def test_a_run_and_its_report_are_tracked_offline_with_nothing_secret(tmp_path):
  workdir, wandb_dir = tmp_path / "w", tmp_path / "wb"
  track = ["--config.track.wandb_project=tlflax-test", "--config.track.wandb_mode=offline",
           f"--config.track.wandb_dir={wandb_dir}"]
  args = TINY_ARGS + ["--config.target.epochs=1", "--config.log_every_steps=8",
                      f"--workdir={workdir}"] + track
  env = {**SECRET_ENV, "WANDB_API_KEY": SECRET, "WANDB_SILENT": "true"}
  result = run_cli(args, tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  report = run_cli(["--mode=report", f"--workdir={workdir}"] + track, tmp_path, env=env)
  assert report.returncode == 0, report.stderr[-3000:]

  run, history, _ = _offline_run(wandb_dir, "scratch")
  assert run.project == "tlflax-test" and run.run_group == "w"
  config = {i.key: json.loads(i.value_json) for i in run.config.update}
  assert config["mode"] == "scratch"
  assert config["model"]["name"] == "resnet10"
  assert config["target"]["batch_size"] == 32
  # Every log_every_steps window (32 steps: 4 windows) and the epoch's evaluation, at its step.
  windows = [h for h in history if "train/train_loss" in h]
  assert [h["_step"] for h in windows] == [8, 16, 24, 32]
  records = [json.loads(x) for x in (workdir / "scratch" / "train_steps.jsonl").read_text()
             .splitlines()]
  assert [h["train/train_loss"] for h in windows] == [r["train_loss"] for r in records]
  assert [h["train/learning_rate"] for h in windows] == [r["learning_rate"] for r in records]
  evaluation = [h for h in history if "test_accuracy" in h]
  metrics = json.loads((workdir / "scratch" / "metrics.jsonl").read_text().splitlines()[0])
  assert len(evaluation) == 1 and evaluation[0]["_step"] == 32
  assert evaluation[0]["test_accuracy"] == metrics["test_accuracy"]
  assert evaluation[0]["test_loss"] == metrics["test_loss"]

  _, report_history, summary = _offline_run(wandb_dir, "report")
  logged = {k: v for h in report_history for k, v in h.items()}  # an image: report/NAME/_type ...
  images = {k[:-len("/_type")] for k, v in logged.items() if k.endswith("/_type")
            and v == "image-file"}
  assert {"report/loss", "report/accuracy", "report/time"} <= images
  assert all(logged[f"{name}/format"] == "png" for name in images)
  assert sorted(k for k in summary if k.startswith("claim_")) == ["claim_1", "claim_2", "claim_3"]
  assert all(v.startswith("cannot be judged") for k, v in summary.items()
             if k.startswith("claim_"))
  media = list(wandb_dir.glob("wandb/offline-run-*/files/media/images/report/*.png"))
  assert len(media) >= 3
  # The key and the environment stay out of wandb's files, the run folders and the output.
  assert_nothing_secret(result, workdir, wandb_dir)
  assert_nothing_secret(report, workdir, wandb_dir)


def test_tracking_without_wandb_installed_is_one_line_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  code = ("import sys, runpy; sys.modules['wandb'] = None; "
          "sys.argv = ['tlflax'] + sys.argv[1:]; runpy.run_module('tlflax.main', "
          "run_name='__main__')")
  import subprocess
  import sys

  from conftest import REPO
  result = subprocess.run(
      [sys.executable, "-c", code, "--mode=scratch", "--config=smoke", f"--workdir={workdir}",
       "--config.track.wandb_project=p"], cwd=REPO, capture_output=True, text=True, timeout=300,
      check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      "tlflax: error: config.track.wandb_project is set but wandb is not installed: install the "
      "track extra, pip install -e '.[track]' in the tlflax checkout (or unset "
      "config.track.wandb_project)")
  assert not workdir.exists()
