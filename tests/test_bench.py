"""`python -m tlflax.tools.bench`: the step benchmark's JSON, its numbers' relations, its errors."""

import json
import os
import subprocess
import sys

from conftest import JAX_CACHE, REPO

TINY = ["--config=smoke", "--config.model.name=resnet10", "--config.model.width=4",
        "--config.target.batch_size=16", "--config.target.eval_batch_size=32",
        "--config.target.image_size=16", "--config.target.crop_padding=2"]


def _bench(*args, timeout=600):
  # The session's compilation cache: only speed depends on it (start-up times use their own).
  return subprocess.run([sys.executable, "-m", "tlflax.tools.bench", *TINY,
                         f"--cache_dir={JAX_CACHE}", *args], cwd=REPO, env=dict(os.environ), capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_step_benchmark_writes_every_variant_with_consistent_numbers(tmp_path):
  # --nostartup: the start-up figures cost two cold subprocesses (tlflax/tools/bench.py _startup).
  out = _bench(f"--json={tmp_path / 'b.json'}", "--steps=2", "--peak_tflops=0.1", "--nostartup")
  assert out.returncode == 0, out.stderr[-2000:]
  result = json.loads((tmp_path / "b.json").read_text())
  assert (result["device_count"], result["batch_size"], result["conv"]) == (1, 16, "gemm")
  rows = {r["variant"]: r for r in result["results"]}
  assert list(rows) == ["full", "stages:2", "linear_probe", "eval"]
  for r in rows.values():
    assert r["img_per_s"] > 0 and r["compile_s"] > 0 and r["flops_per_step"] > 0
    # TFLOP/s and MFU are the FLOP count over the measured time, against the given peak.
    assert abs(r["tflops"] - r["flops_per_step"] / (r["step_ms"] / 1e3) / 1e12) < 1e-9
    assert abs(r["mfu"] - r["tflops"] / 0.1) < 1e-9
  # Freezing removes backward work; the probe's step is a small matrix product.
  assert rows["full"]["flops_per_step"] > rows["stages:2"]["flops_per_step"] > \
      10 * rows["linear_probe"]["flops_per_step"]
  assert rows["linear_probe"]["features_s"] > 0
  assert 0 <= result["host_share"] <= 1
  assert "| full |" in out.stdout


def test_bad_variant_and_missing_torch_are_one_line_errors(tmp_path):
  out = _bench("--variants=full,fast", "--nostartup")
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1] == (
      "tlflax.tools.bench: error: unknown variant 'fast': use full, stages:N, linear_probe or eval")
  out = _bench("--variants=eval", "--nostartup", "--steps=1", "--compare-torch",
               f"--torch_python={tmp_path / 'no-python'}")
  assert out.returncode == 2
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("tlflax.tools.bench: error: --compare-torch:") and "--torch_python" in last
