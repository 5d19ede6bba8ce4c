"""`benchmarks/gpu.sh --here OUT --rehearse`: the one-call device benchmark and checks, rehearsed
on this CPU as the GPU machine would run it (current interpreter, carried wheels in a target
folder, no TensorFlow), with figures whose relations hold."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import JAX_CACHE, REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import device_figures

CARRIED = ["ml-collections", "tensorboardX"]  # the device's python has the rest, pytest too


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("device")
  wheels = tmp / "wheels"  # what ../shared/device/wheels.sh carries, for this interpreter
  got = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--only-binary=:all:", "-d", str(wheels), *CARRIED],
                       capture_output=True, text=True, timeout=300, check=False)
  assert got.returncode == 0, got.stderr[-2000:]
  out = tmp / "out"
  env = {**os.environ, "PYTHON": sys.executable, "TLFLAX_WHEELS": str(wheels),
         "TLFLAX_JAX_CACHE": JAX_CACHE}
  run = subprocess.run(["bash", "benchmarks/gpu.sh", "--here", str(out), "--rehearse",
                        f"--work={tmp / 'work'}"], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=900, check=False)
  log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
  assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log[-5000:]
  return out, run, json.loads((out / "figures.json").read_text()), tmp / "work"


def test_it_runs_on_the_interpreter_as_it_is_with_the_carried_wheels(rehearsal):
  out, run, fig, _ = rehearsal
  m = fig["machine"]
  assert fig["rehearse"] and m["backend"] == "cpu"
  assert f"installed {len(CARRIED)} carried wheel(s)" in run.stderr
  for name in ("ml_collections", "tensorboardX"):  # imported from the target folder
    assert "/site/" in m["modules"][name], m["modules"]
  assert m["modules"]["pytest"].startswith(sys.prefix)  # the interpreter's own
  assert m["modules"]["tlflax"] == str(REPO / "tlflax" / "__init__.py")
  assert m["modules"]["tensorflow"] is None  # hidden, as on the device, and nothing needed it
  assert not fig["failed"] and not fig["skipped"]
  # At most 8 files come back from the device: these 6.
  assert sorted(p.name for p in out.iterdir()) == [
      "bench_16.json", "bench_32.json", "figures.json", "figures.txt", "log.txt",
      "smoke_report.md"]


def test_the_bench_covers_every_variant_at_two_batches(rehearsal):
  _, _, fig, _ = rehearsal
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
  _, run, fig, _ = rehearsal
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


def test_the_smoke_study_writes_its_report_and_keeps_frozen_layers_bitwise(rehearsal):
  out, run, fig, _ = rehearsal
  smoke = fig["smoke"]
  assert (smoke["backend"], smoke["report"]) == ("cpu", True)
  assert len(smoke["verdicts"]) == 3
  assert (out / "smoke_report.md").read_text().count("**") >= 6  # the three verdicts, in bold
  # ResNet-10 with the stem and 2 stages frozen: the stem conv and BN (3 arrays), stage 1 (one
  # block: 2 convs, 2 BNs: 6), stage 2 (the same and a projection conv and BN: 9) = 18 arrays;
  # 6 BatchNorms of 2 statistics each. Everything after them, the fresh head included, moved.
  (name, v), = smoke["frozen"].items()
  assert name == "transfer_full/seed_0" and v["freeze"] == "stages:2"
  assert (v["frozen_params"], v["frozen_params_equal"]) == (18, 18)
  assert (v["frozen_bn_stats"], v["frozen_bn_stats_equal"]) == (12, 12)
  assert v["trainable_params_moved"] == v["trainable_params"] > 0
  assert "frozen bitwise equal 18/18 params, 12/12 BatchNorm statistics" in run.stdout


def test_the_frozen_check_sees_layers_that_moved(rehearsal, tmp_path):
  """The same run read as if stage 3 had been frozen too: its parameters moved, so the check
  counts them as unequal (it compares, it does not trust the config)."""
  *_, work = rehearsal
  study = tmp_path / "study"
  shutil.copytree(work / "smoke", study)
  config = study / "transfer_full" / "seed_0" / "config.json"
  c = json.loads(config.read_text())
  c["transfer"]["freeze"] = "stages:3"
  config.write_text(json.dumps(c))
  v = device_figures.frozen_check(str(study))["transfer_full/seed_0"]
  assert v["frozen_params"] == 18 + 9  # stage 3 has the layout of stage 2
  assert v["frozen_params_equal"] == 18
  assert v["frozen_bn_stats"] == 12 + 6 and v["frozen_bn_stats_equal"] == 12


def test_the_test_slice_runs_under_the_interpreters_pytest_and_is_summarised(rehearsal):
  _, run, fig, _ = rehearsal
  tests = fig["tests"]
  assert list(tests) == ["tests_device", "tests_cpu8"]
  for t in tests.values():
    assert (t["tests"], t["failures"], t["errors"], t["skipped"], t["failing"]) == (1, 0, 0, 0, {})
  assert "tests_cpu8: 1 passed, 0 failed, 0 skipped" in run.stdout


def test_a_junit_summary_names_each_failing_test_with_its_first_line(tmp_path):
  (tmp_path / "test_x.py").write_text(
      "import pytest\n"
      "def test_ok(): assert 1 + 1 == 2\n"
      "def test_bad(): assert 1 + 1 == 3, 'arithmetic\\nsecond line'\n"
      "@pytest.mark.skip(reason='later')\n"
      "def test_later(): pass\n")
  junit = tmp_path / "x.xml"
  subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                  f"--junitxml={junit}", "--rootdir", str(tmp_path), str(tmp_path / "test_x.py")],
                 cwd=tmp_path, capture_output=True, timeout=120, check=False)
  t = device_figures._junit(junit)
  assert (t["tests"], t["failures"], t["errors"], t["skipped"]) == (3, 1, 0, 1)
  (name, message), = t["failing"].items()
  assert name.endswith("::test_bad") and message.startswith("AssertionError: arithmetic")
  assert "second line" not in message


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


@pytest.mark.parametrize("args,expected", [
    (["--out={out}", "--parts=bench,smok"], "--parts 'bench,smok' names ['smok']"),
    (["--out={out}", "--parts="], "--parts '' names nothing"),
    (["--parts=bench"], "no --out"),
])
def test_parts_it_does_not_have_are_one_line_and_exit_2_before_anything_runs(tmp_path, args,
                                                                            expected):
  out = tmp_path / "out"
  result = subprocess.run([sys.executable, "benchmarks/device_figures.py",
                           *(a.format(out=out) for a in args)], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
  assert result.returncode == 2
  assert result.stderr.count("\n") == 1 and expected in result.stderr
  assert "bench,smoke,tests,epochs,bench_large" in result.stderr  # what it does have
  assert not out.exists()
