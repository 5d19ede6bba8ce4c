"""The report from metrics on disk: every seed counted once, validation selection, and the
study's claims judged from hand-built curves whose verdicts are known."""

import json
import os

import numpy as np
import pytest

from tlflax import report


def _run(run_dir, seed, accuracies, events=(), mode="scratch", study=None, val=None,
         losses=None, train_losses=None):
  run_dir.mkdir(parents=True)
  config = {"mode": mode, "seed": seed, **({"study": study} if study else {})}
  (run_dir / "config.json").write_text(json.dumps(config))
  lines = []
  for e, a in enumerate(accuracies):
    r = {"epoch": e + 1, "step": 10 * (e + 1), "test_accuracy": a,
         "test_loss": losses[e] if losses is not None else 1 - a,
         "train_loss": train_losses[e] if train_losses is not None else 2.0 - e / 100}
    if val is not None:
      r["val_accuracy"] = val[e]
    lines.append(r)
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
  assert summary["seeds"] == [0, 1] and summary["selected_on"] == "test"
  assert summary["final"]["test_accuracy"]["mean"] == pytest.approx((0.4 + 0.6) / 2)
  assert summary["final"]["test_accuracy"]["std"] == pytest.approx(0.1)  # over the 2 seeds
  assert summary["curves"]["test_loss"]["mean"] == pytest.approx([1 - 0.4, 1 - 0.5])
  assert summary["curves"]["test_loss"]["std"] == pytest.approx([0.1, 0.1])
  assert summary["epochs"] == [1, 2]
  out = report.write_report(str(tmp_path))
  with open(f"{out}/report.md") as f:
    md = f.read()
  assert "| scratch | all | 2 | test | 0.5000 ± 0.1000 |" in md
  assert "every \"best\" figure below is selected on the test set" in md
  assert md.count("**cannot be judged**") == 3  # no transfer runs
  assert os.path.getsize(f"{out}/accuracy.png") > 10_000
  assert not os.path.exists(f"{out}/labels.png")  # one budget


def test_a_single_run_of_another_seed_joins_the_compare_seeds(tmp_path):
  _run(tmp_path / "scratch", 5, [0.1, 0.2])
  _run(tmp_path / "scratch" / "seed_0", 0, [0.3, 0.4])
  assert report.find_runs(str(tmp_path), "scratch") == [
      str(tmp_path / "scratch"), str(tmp_path / "scratch" / "seed_0")]


def test_a_single_run_on_a_label_budget_is_an_experiment_of_its_own(tmp_path):
  _run(tmp_path / "scratch", 5, [0.1, 0.2])
  _run(tmp_path / "scratch" / "seed_0", 0, [0.3, 0.4])
  config = json.loads((tmp_path / "scratch" / "config.json").read_text())
  (tmp_path / "scratch" / "config.json").write_text(json.dumps(
      {**config, "target": {"examples_per_class": 25}}))
  experiments = report.summarize(str(tmp_path))["experiments"]
  assert {name: (e["budget"], e["seeds"]) for name, e in experiments.items()} == {
      "scratch": (0, [0]), "scratch_25shot": (25, [5])}


def test_validation_selects_the_epoch_and_the_test_accuracy_is_read_there(tmp_path):
  # Test accuracy peaks at epoch 3, validation accuracy at epoch 2 (seed 0) and 1 (seed 1).
  _run(tmp_path / "scratch" / "seed_0", 0, [0.1, 0.3, 0.5, 0.2], val=[0.2, 0.6, 0.4, 0.1])
  _run(tmp_path / "scratch" / "seed_1", 1, [0.2, 0.1, 0.7, 0.3], val=[0.5, 0.4, 0.3, 0.2])
  e = report.summarize(str(tmp_path))["experiments"]["scratch"]
  assert e["selected_on"] == "val"
  assert e["best"]["epoch"]["mean"] == pytest.approx(1.5)  # epochs 2 and 1
  assert e["best"]["test_accuracy"]["mean"] == pytest.approx((0.3 + 0.2) / 2)
  assert e["best"]["val_accuracy"]["mean"] == pytest.approx((0.6 + 0.5) / 2)
  out = report.write_report(str(tmp_path))
  with open(f"{out}/report.md") as f:
    md = f.read()
  assert "the test set played no part in choosing it" in md
  assert "| scratch | all | 2 | val | 0.2500 ± 0.0500 | 1.5 ± 0.5 |" in md


def _study(tmp_path, scratch_loss, scratch_acc, scratch_train, transfer_loss, transfer_acc,
           seeds=(0, 1)):
  """Two seeds of scratch and transfer_full whose mean curves are the ones given (seed k is
  offset by -d, +d, so the means are exact)."""
  for exp, mode, loss, acc, train in (
      ("scratch", "scratch", scratch_loss, scratch_acc, scratch_train),
      ("transfer_full", "transfer", transfer_loss, transfer_acc, None)):
    for k, seed in enumerate(seeds):
      d = 0.001 * (1 if k else -1)
      _run(tmp_path / exp / f"seed_{seed}", seed, list(np.asarray(acc) + d), mode=mode,
           study={"experiment": exp, "arm": "full" if mode == "transfer" else None, "budget": 0},
           losses=list(np.asarray(loss) + d),
           train_losses=list(np.asarray(train) + d) if train is not None else None)
  summary = report.summarize(str(tmp_path))
  assert summary["claims_on"] == {"scratch": "scratch", "transfer": "transfer_full"}
  return [(c["verdict"], c["epoch"]) for c in summary["claims"]], summary["claims"]


def test_the_claims_hold_on_curves_shaped_like_the_study(tmp_path):
  epochs = np.arange(1, 101)
  # Scratch: test loss falls to its minimum 1.5 at epoch 60, then rises to 2.3; train loss falls
  # throughout; accuracy 0.30 at epoch 30, 0.45 at its best.
  scratch_loss = np.where(epochs <= 60, 3.0 - 1.5 * epochs / 60, 1.5 + 0.02 * (epochs - 60))
  scratch_train = 3.0 - 2.9 * epochs / 100
  scratch_acc = np.minimum(0.01 * epochs, 0.45)
  # Transfer (40 epochs): test loss below 1.5 from epoch 12, accuracy above 0.30 from epoch 8.
  t = np.arange(1, 41)
  transfer_loss = 2.0 - 0.05 * t
  transfer_acc = 0.2 + 0.0126 * t
  verdicts, claims = _study(tmp_path, scratch_loss, scratch_acc, scratch_train, transfer_loss,
                            transfer_acc)
  assert verdicts == [("holds", 11), ("holds", 8), ("holds", 60)]
  assert "1.4500 at epoch 11 is below scratch's lowest mean test loss 1.5000 (epoch 60 of 100)" \
      in claims[0]["evidence"]
  assert "(0.3000, epoch 30)" in claims[1]["evidence"]
  out = report.write_report(str(tmp_path))
  with open(f"{out}/report.md") as f:
    md = f.read()
  assert md.count("**holds**") == 3 and "1. **holds** (epoch 11):" in md


def test_the_claims_fail_when_transfer_is_slow_and_scratch_overfits_early(tmp_path):
  epochs = np.arange(1, 101)
  scratch_loss = np.where(epochs <= 20, 3.0 - epochs / 20, 2.0 + 0.01 * (epochs - 20))
  scratch_train = 3.0 - 2.9 * epochs / 100
  scratch_acc = np.minimum(0.02 * epochs, 0.5)  # 0.5 from epoch 25
  t = np.arange(1, 41)
  transfer_loss = 2.6 - 0.02 * t  # below 2.0 only after epoch 30
  transfer_acc = 0.1 + 0.01 * t  # never above 0.5
  verdicts, claims = _study(tmp_path, scratch_loss, scratch_acc, scratch_train, transfer_loss,
                            transfer_acc)
  assert verdicts == [("does not hold", 31), ("does not hold", None), ("does not hold", 20)]
  assert "only at epoch 31, after 25" in claims[0]["evidence"]
  assert "it overfits after epoch 20, not about 60" in claims[2]["evidence"]


def test_the_claims_cannot_be_judged_on_runs_too_short(tmp_path):
  verdicts, claims = _study(tmp_path, [3.0, 2.5, 2.2], [0.1, 0.2, 0.25], [3.0, 2.6, 2.3],
                            [2.8, 2.6, 2.4], [0.15, 0.22, 0.3])
  assert verdicts == [("cannot be judged", None), ("cannot be judged", 3),
                      ("cannot be judged", None)]
  assert "ran only 3 of 25 epochs" in claims[0]["evidence"]
  assert "scratch ran only 3 of 30 epochs" in claims[1]["evidence"]


def test_no_evaluation_in_the_claims_window_cannot_be_judged(tmp_path):
  # Evaluated every 40 epochs: nothing inside the first 25 / 30 epochs to compare.
  for exp, mode in (("scratch", "scratch"), ("transfer_full", "transfer")):
    run_dir = tmp_path / exp / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({
        "mode": mode, "seed": 0, "study": {"experiment": exp, "arm": "full", "budget": 0}}))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "test_accuracy": 0.1, "test_loss": 2.0, "train_loss": 2.0}) + "\n"
        for e in (40, 80)))
  claims = report.summarize(str(tmp_path))["claims"]
  assert claims[1]["verdict"] == "cannot be judged" and "eval_every_epochs" in claims[1]["evidence"]
