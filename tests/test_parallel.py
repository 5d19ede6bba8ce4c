"""Data parallelism: 8 forced CPU devices and 2 processes compute what 1 device computes.

The 8-device numbers come from one subprocess (`multidevice_checks.py`); the multi-process test
starts real processes that join through jax.distributed (gloo collectives on 127.0.0.1).
Tolerance: float32 sums taken in another order, about 1e-6 relative; asserted at 1e-5.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import jax
import multidevice_checks
import numpy as np
import pytest
from conftest import JAX_CACHE, REPO

from tlflax import parallel
from tlflax.errors import UserError

TOL = 1e-5


@pytest.fixture(scope="module")
def eight(tmp_path_factory):
  """The measurements of multidevice_checks.py on 8 forced host devices."""
  root = tmp_path_factory.mktemp("eight")
  out = root / "out.json"
  result = subprocess.run([sys.executable, str(REPO / "tests" / "multidevice_checks.py"),
                           str(out), JAX_CACHE], cwd=REPO, capture_output=True,
                          text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  return json.loads(out.read_text())


def test_gradient_on_8_devices_equals_the_full_batch_gradient(eight):
  """The first update of the head bias is proportional to its gradient: under shard_map on 8
  devices it must equal the one from the whole global batch on one device (before the fix it
  was 8 times larger: jax.grad had already summed over the shards, then pmean kept the sum)."""
  steps = eight["steps"]["shard_map"]
  assert eight["devices"] == 8
  assert (steps["state_devices"], steps["reference_devices"]) == (8, 1)
  assert steps["head_bias_grad_ratio"] == pytest.approx(1.0, abs=TOL)


def test_steps_on_8_devices_match_one_device_on_the_same_global_batch(eight):
  steps = eight["steps"]["shard_map"]
  np.testing.assert_allclose(steps["losses"], steps["reference_losses"], rtol=TOL)
  assert steps["params_rel"] < TOL  # synchronised BN: the statistics match too
  assert steps["batch_stats_rel"] < TOL


def test_each_device_builds_its_part_of_the_same_global_batch(eight):
  batch = eight["batch"]
  assert batch["images_equal"] and batch["labels_equal"]  # bitwise
  assert batch["images_differ_between_examples"]  # per-example augmentation keys


@pytest.mark.parametrize("name", ["8_to_1", "1_to_8"])
def test_a_checkpoint_moves_between_8_devices_and_1(eight, name):
  """Interrupted on one device count, resumed on the other: ends like an uninterrupted 1-device
  run (params, BN statistics, metrics), every test example counted once."""
  resume = eight["resume"]
  run = resume[name]
  assert run["resumed_from_epoch"] == 1
  assert run["devices"] == (1 if name == "8_to_1" else 8)
  assert run["params_rel"] < TOL and run["batch_stats_rel"] < TOL
  for got, want in zip(run["history"], resume["reference_history"], strict=True):
    assert got["test_count"] == want["test_count"] == 37
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=TOL)
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=TOL)


@pytest.mark.parametrize("kind", ["shard_map", "pmap"])
def test_whole_runs_under_shard_map_and_pmap_match_one_device(eight, kind):
  run = eight["resume"][f"whole_{kind}"]
  assert run["summary"] == {"backend": "cpu", "devices": 8, "processes": 1, "parallel": kind}
  assert run["params_rel"] < TOL
  for got, want in zip(run["history"], eight["resume"]["reference_history"], strict=True):
    assert got["test_count"] == 37
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=TOL)


@pytest.mark.parametrize("name", ["stream_shard_map", "stream_pmap", "stream_resume"])
def test_streamed_batches_on_8_devices_train_like_the_device_path_on_one(eight, name):
  """Batches gathered on the host and split over 8 devices (shard_map, pmap, and a run
  interrupted on the device path and resumed streaming) end like the 1-device device-path run."""
  run = eight["resume"][name]
  assert run.get("pipeline", "stream") == "stream"
  assert run.get("resumed_from_epoch", 1) == 1
  assert run["params_rel"] < TOL
  for got, want in zip(run["history"], eight["resume"]["reference_history"], strict=True):
    assert got["test_count"] == 37
    assert got["train_loss"] == pytest.approx(want["train_loss"], rel=TOL)
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=TOL)


def test_transfer_source_restores_onto_every_device_of_the_mesh(eight):
  assert eight["resume"]["init_from_devices"] == 8


def test_rank_features_on_8_devices_and_streamed_equal_one_device_in_example_order(eight):
  rank = eight["rank"]
  assert rank["shapes"] == {"stage1": [37, 4], "stage2": [37, 8], "stage3": [37, 16],
                            "stage4": [37, 32], "probs": [37, 10]}
  assert all(rank[name] < 1e-5 for name in ("eight", "pmap8", "eight_stream", "pmap8_stream"))


def test_a_batch_that_does_not_split_over_the_devices_names_the_nearest_sizes(eight):
  assert eight["batch_error"] == ("batch_size=100 does not split evenly over 8 devices: use 96 "
                                  "or 104 (a multiple of 8)")


# ------------------------------------------------------------------------------------------------
# In this process (one CPU device)
# ------------------------------------------------------------------------------------------------


def test_placement_on_one_device_describes_itself_and_rounds_batches():
  place = parallel.Placement.create()
  assert place.describe() == {"backend": "cpu", "device_kind": "cpu", "devices": 1,
                              "processes": 1, "parallel": "shard_map"}
  place.check_batch(37, "batch_size")  # one device takes any batch
  assert place.round_up(37) == 37
  with pytest.raises(UserError, match="unknown config.parallel 'dp'"):
    parallel.Placement.create("dp")


@pytest.mark.parametrize("kwargs,expected", [
    ({"coordinator": "127.0.0.1:1234"}, "needs --num_processes=N"),
    ({"coordinator": "127.0.0.1:1234", "num_processes": 2, "process_id": 2}, "0 <= I < N"),
    ({"num_processes": 2, "process_id": 0}, "need --coordinator=HOST:PORT"),
])
def test_bad_distributed_flags_are_user_errors(kwargs, expected):
  with pytest.raises(UserError, match=expected):
    parallel.initialize(**kwargs)


def test_no_flags_and_no_cluster_start_nothing(monkeypatch):
  for var in ("SLURM_JOB_ID", "SLURM_NTASKS"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize() is False
  assert jax.process_count() == 1


def test_an_expected_accelerator_that_jax_cannot_see_stops_the_run():
  parallel.check_accelerator("cpu")
  parallel.check_accelerator("")
  with pytest.raises(UserError, match=r"TLFLAX_ACCEL=cuda12 but jax finds only the CPU: .*"
                                      r"pip install -U 'jax\[cuda12\]'"):
    parallel.check_accelerator("cuda12")
  with pytest.raises(UserError, match="TLFLAX_ACCEL=tpu but jax finds only the CPU"):
    parallel.check_accelerator("tpu")
  with pytest.raises(UserError, match="TLFLAX_ACCEL='rocm' is not one of"):
    parallel.check_accelerator("rocm")


# ------------------------------------------------------------------------------------------------
# Two processes
# ------------------------------------------------------------------------------------------------

TINY = ["--mode=scratch", "--config=configs/smoke.py"] + [
    f"--config.{k}={v}" for k, v in multidevice_checks.TINY.items()]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(args, tmp_path, processes: int, devices: int, env: dict | None = None):
  """Starts `processes` tlflax processes with `devices` CPU devices each (and `env` added to the
  environment); returns (exit code, stderr) of each. Output goes to files: a process blocked on
  a full pipe would stall the others in their next collective."""
  env = {**os.environ, "TLFLAX_JAX_CACHE": JAX_CACHE,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", **(env or {})}
  extra = []
  if processes > 1:
    extra = [f"--coordinator=127.0.0.1:{_free_port()}", f"--num_processes={processes}"]
  logs = [tmp_path / f"process{i}.log" for i in range(processes)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with open(log, "w") as out:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "tlflax.main", *args, *extra]
            + ([f"--process_id={i}"] if processes > 1 else []),
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT))
    codes = [p.wait(timeout=300) for p in procs]  # ~1 min each; a hang fails in 5
  finally:
    for p in procs:
      p.kill()
  return [(code, log.read_text()) for code, log in zip(codes, logs)]


def _metrics(run_dir):
  return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_train_resume_and_report_like_one_process_with_4_devices(eight, tmp_path):
  """The reference is the same run in one process on 4 devices (from multidevice_checks.py)."""
  two = tmp_path / "two"
  runs = _launch(TINY + [f"--workdir={two}"], tmp_path, processes=2, devices=2)
  assert [c for c, _ in runs] == [0, 0], runs[0][1][-3000:] + runs[1][1][-3000:]
  assert "cpu backend: 4 device(s) (cpu), 2 process(es)" in runs[0][1]
  assert "[scratch] epoch 2:" in runs[0][1] and "[scratch] epoch" not in runs[1][1]  # process 0 logs

  summary = json.loads((two / "scratch" / "summary.json").read_text())
  assert (summary["devices"], summary["processes"]) == (4, 2)
  reference = eight["tiny_four_devices"]
  first = _metrics(two / "scratch")
  assert len(first) == 2 and all(r["test_count"] == r["val_count"] == 40 for r in first)
  for got, want in zip(first, reference, strict=True):
    for key in ("train_loss", "test_loss", "test_accuracy"):
      assert got[key] == pytest.approx(want[key], rel=TOL), key
  assert len(list(two.glob("scratch/events.out.tfevents.*"))) == 1  # from process 0 only

  # Lose the last checkpoint and the summary, as a crash in epoch 2 would: the two processes
  # resume from epoch 1, this time each streaming its half of every batch from host memory,
  # and end with the same numbers.
  shutil.rmtree(two / "scratch" / "checkpoints" / "4")
  (two / "scratch" / "summary.json").unlink()
  runs = _launch(TINY + [f"--workdir={two}", "--config.data.pipeline=stream"], tmp_path,
                 processes=2, devices=2)
  assert [c for c, _ in runs] == [0, 0], runs[0][1][-3000:] + runs[1][1][-3000:]
  assert "checkpoints/2 at the start of epoch 2" in runs[0][1]
  assert "streaming batches from host memory" in runs[0][1]
  resumed = _metrics(two / "scratch")
  assert [r["epoch"] for r in resumed] == [1, 2]
  for got, want in zip(resumed, first, strict=True):
    assert got["test_loss"] == pytest.approx(want["test_loss"], rel=TOL)
  assert json.loads((two / "scratch" / "summary.json").read_text())["resumed_from_epoch"] == 1

  runs = _launch(["--mode=report", f"--workdir={two}"], tmp_path, processes=2, devices=2)
  assert [c for c, _ in runs] == [0, 0], runs[0][1][-3000:]
  report = json.loads((two / "report" / "summary.json").read_text())
  scratch = report["experiments"]["scratch"]
  assert scratch["final"]["test_accuracy"]["mean"] == resumed[-1]["test_accuracy"]
