"""`benchmarks/gpu.sh --here OUT --rehearse`: the one-call device benchmark, rehearsed on this CPU
as the GPU machine would run it (current interpreter, carried wheels in a target folder, no
TensorFlow), with figures whose relations hold."""

import json
import os
import subprocess
import sys

import pytest
from conftest import JAX_CACHE, REPO


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("device")
  wheels = tmp / "wheels"  # what ../shared/device/wheels.sh carries, for this interpreter
  got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(wheels), "ml-collections", "tensorboardX"],
                       capture_output=True, text=True, timeout=300, check=False)
  assert got.returncode == 0, got.stderr[-2000:]
  out = tmp / "out"
  env = {**os.environ, "PYTHON": sys.executable, "TLFLAX_WHEELS": str(wheels),
         "TLFLAX_JAX_CACHE": JAX_CACHE}
  run = subprocess.run(["bash", "benchmarks/gpu.sh", "--here", str(out), "--rehearse"], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900, check=False)
  log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log[-5000:]
  return out, run, json.loads((out / "figures.json").read_text())


def test_it_runs_on_the_interpreter_as_it_is_with_the_carried_wheels(rehearsal):
  out, run, fig = rehearsal
  m = fig["machine"]
  assert fig["rehearse"] and m["backend"] == "cpu"
  assert "installed 2 carried wheel(s)" in run.stderr
  for name in ("ml_collections", "tensorboardX"):  # imported from the target folder
    assert "/site/" in m["modules"][name], m["modules"]
  assert m["modules"]["tlflax"] == str(REPO / "tlflax" / "__init__.py")
  assert m["modules"]["tensorflow"] is None  # hidden, as on the device, and nothing needed it
  assert not fig["failed"] and not fig["skipped"]
  # At most 8 files come back from the device: these 5.
  assert sorted(p.name for p in out.iterdir()) == [
      "bench_16.json", "bench_32.json", "figures.json", "figures.txt", "log.txt"]


def test_the_bench_covers_every_variant_at_two_batches(rehearsal):
  _, _, fig = rehearsal
  assert sorted(fig["bench"]) == ["16", "32"]
  for b in fig["bench"].values():
    assert b["dtype"] == "bfloat16" and b["peak_tflops_per_device"] == 0.1
    rows = b["results"]
    assert list(rows) == ["full", "stages:2", "linear_probe", "eval"]
    for r in rows.values():
      assert r["img_per_s"] > 0 and r["compile_s"] > 0
      assert r["tflops"] == pytest.approx(r["flops_per_step"] / (r["step_ms"] / 1e3) / 1e12)
      assert r["mfu"] == pytest.approx(r["tflops"] / 0.1)
    assert rows["full"]["flops_per_step"] > rows["stages:2"]["flops_per_step"]


def test_two_epochs_of_each_run_and_the_projected_study(rehearsal):
  _, run, fig = rehearsal
  epochs = fig["epochs"]
  assert list(epochs) == ["pretrain", "transfer_full", "scratch", "transfer_stages2", "probe"]
  for e in epochs.values():
    assert (e["train_examples"], e["batch_size"]) == (256, 16)
    assert 0 < e["epoch_s"] < e["epoch_wall_s"] < e["wall_s"]
    assert e["load_s"] + e["compile_s"] < e["until_first_eval_s"] < e["wall_s"]
    assert e["load_s"] > 0 and e["compile_s"] > 0
  assert epochs["pretrain"]["dataset"] == "synthetic10"
  assert epochs["scratch"]["dataset"] == "synthetic100"
  assert epochs["probe"]["features_s"] > 0 and epochs["scratch"]["features_s"] == 0
  p = fig["projection"]
  for phase, run_name, n in (("pretrain", "pretrain", 30), ("scratch", "scratch", 100),
                             ("transfer", "transfer_full", 100)):
    e = epochs[run_name]
    assert p[phase]["total_s"] == pytest.approx(
        e["until_first_eval_s"] + (n - 1) * e["epoch_wall_s"])
  assert p["total_s"] == pytest.approx(sum(p[k]["total_s"] for k in ("pretrain", "scratch",
                                                                      "transfer")))
  assert "study projected (pretrain 30 + scratch 100 + transfer 100 epochs)" in run.stdout


@pytest.mark.parametrize("args,expected", [
    (["--here", "--rehearse"], "--rehearse where the output folder belongs"),
    (["--rehearse"], "unknown option --rehearse"),
    (["--here"], "usage: benchmarks/gpu.sh --here OUT_DIR"),
])
def test_a_flag_where_the_folder_belongs_is_one_line_and_exit_2(tmp_path, args, expected):
  result = subprocess.run(["bash", "benchmarks/gpu.sh", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False, env={**os.environ, "PYTHON": "false"})
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and expected in result.stderr
  assert not (REPO / "--rehearse").exists()
