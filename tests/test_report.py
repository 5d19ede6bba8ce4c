"""The report from metrics on disk: every seed counted once, events ignored."""

import json
import os

import pytest

from tlflax import report


def _run(run_dir, seed, accuracies, events=()):
  run_dir.mkdir(parents=True)
  (run_dir / "config.json").write_text(json.dumps({"mode": "scratch", "seed": seed}))
  lines = [{"epoch": e + 1, "step": 10 * (e + 1), "test_accuracy": a, "test_loss": 1 - a}
           for e, a in enumerate(accuracies)]
  lines[1:1] = list(events)
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_a_seed_run_both_alone_and_in_compare_counts_once(tmp_path):
  _run(tmp_path / "scratch", 0, [0.1, 0.2])  # --mode=scratch, seed 0
  _run(tmp_path / "scratch" / "seed_0", 0, [0.3, 0.4],
       events=[{"event": "interrupted", "signal": "SIGTERM", "step": 12, "epoch": 2}])
  _run(tmp_path / "scratch" / "seed_1", 1, [0.5, 0.6])
  assert report.find_runs(str(tmp_path), "scratch") == [
      str(tmp_path / "scratch" / "seed_0"), str(tmp_path / "scratch" / "seed_1")]
  summary = report.summarize(str(tmp_path))["experiments"]["scratch"]
  assert summary["best_test_accuracy"]["n"] == 2
  assert summary["final_test_accuracy"]["mean"] == pytest.approx((0.4 + 0.6) / 2)
  assert summary["final_test_accuracy"]["std"] == pytest.approx(0.1)  # over the 2 seeds
  assert summary["mean_test_loss"] == pytest.approx([1 - 0.4, 1 - 0.5])
  assert summary["epochs"] == [1, 2]
  out = report.write_report(str(tmp_path))
  with open(f"{out}/report.md") as f:
    assert "| Experiment A: from scratch | 2 | 0.5000 ± 0.1000 |" in f.read()
  assert os.path.getsize(f"{out}/accuracy.png") > 10_000


def test_a_single_run_of_another_seed_joins_the_compare_seeds(tmp_path):
  _run(tmp_path / "scratch", 5, [0.1, 0.2])
  _run(tmp_path / "scratch" / "seed_0", 0, [0.3, 0.4])
  assert report.find_runs(str(tmp_path), "scratch") == [
      str(tmp_path / "scratch"), str(tmp_path / "scratch" / "seed_0")]
