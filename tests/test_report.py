"""The report from metrics on disk: every seed counted once, validation selection, and the
study's claims judged from hand-built curves whose verdicts are known."""

import json
import os

import numpy as np
import pytest

from tlflax.study import plots, report


def _run(run_dir, seed, accuracies, events=(), mode="scratch", study=None, val=None,
         losses=None, train_losses=None, finished=True, epochs=None):
  """A hand-made run folder: config.json, metrics.jsonl (test accuracy and losses per epoch,
  `events` after the first record) and, when `finished`, summary.json."""
  run_dir.mkdir(parents=True)
  config = {"mode": mode, "seed": seed, **({"study": study} if study else {}),
            "target": {"epochs": epochs or len(accuracies), "min_steps": 0}}
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
  if finished:
    (run_dir / "summary.json").write_text(json.dumps({"mode": mode, "seed": seed}))


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
  # The sample std over the 2 seeds (ddof=1), not the population std (0.1).
  assert summary["final"]["test_accuracy"]["std"] == pytest.approx(0.1 * np.sqrt(2))
  assert summary["curves"]["test_loss"]["mean"] == pytest.approx([1 - 0.4, 1 - 0.5])
  assert summary["curves"]["test_loss"]["std"] == pytest.approx([0.1 * np.sqrt(2)] * 2)
  assert summary["curves"]["test_loss"]["min"] == pytest.approx([0.5, 0.4])
  assert summary["curves"]["test_loss"]["max"] == pytest.approx([0.7, 0.6])
  assert summary["epochs"] == [1, 2]
  out = report.write_report(str(tmp_path))
  with open(f"{out}/report.md") as f:
    md = f.read()
  assert "| scratch | all | 2 | test | 0.5000 ± 0.1414 |" in md
  assert "sample standard deviation (ddof=1)" in md
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
  assert "| scratch | all | 2 | val | 0.2500 ± 0.0707 | 1.5 ± 0.7 |" in md


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
    (run_dir / "summary.json").write_text("{}")
  claims = report.summarize(str(tmp_path))["claims"]
  assert claims[1]["verdict"] == "cannot be judged" and "eval_every_epochs" in claims[1]["evidence"]


def test_claim_1_is_not_judged_against_a_scratch_run_that_has_not_finished_learning(tmp_path):
  # The 3-epoch smoke compare: both at chance, transfer's loss a hair below scratch's epoch 1.
  verdicts, claims = _study(tmp_path, [4.6285, 4.6400, 4.6500], [0.01] * 3, [4.61, 4.60, 4.59],
                            [4.6300, 4.5965, 4.6000], [0.01] * 3)
  assert verdicts[0] == ("cannot be judged", 2)
  assert "scratch ran only 3 of 25 epochs: its lowest loss is only an upper bound" \
      in claims[0]["evidence"]
  # Scratch ran 40 epochs, but its loss was still falling at the last one.
  epochs = np.arange(1, 41)
  verdicts, claims = _study(tmp_path / "falling", 3.0 - 0.02 * epochs, 0.01 * epochs,
                            3.0 - 0.03 * epochs, 2.0 - 0.05 * epochs, 0.3 + 0.01 * epochs)
  assert verdicts[0] == ("cannot be judged", 1)
  assert "still falling at its last evaluation" in claims[0]["evidence"]


def _every(step, epochs):
  """Records kept at every `step`-th epoch only, as eval_every_epochs=step writes them."""
  return [e for e in epochs if e % step == 0]


def test_claims_need_every_epoch_they_compare_to_be_evaluated(tmp_path):
  """Scratch evaluated every 2 epochs: its lowest loss and best accuracy may lie between
  evaluations, so neither claim 1 nor 2 can hold on them."""
  for exp, mode, step in (("scratch", "scratch", 2), ("transfer_full", "transfer", 1)):
    run_dir = tmp_path / exp / "seed_0"
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({
        "mode": mode, "seed": 0, "study": {"experiment": exp, "arm": "full", "budget": 0}}))
    epochs = _every(step, range(1, 101 if mode == "scratch" else 41))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(
        {"epoch": e, "step": e, "test_accuracy": min(0.01 * e, 0.45) if step == 2 else 0.5,
         "test_loss": 1.0 + abs(e - 60) / 60 if step == 2 else 0.9,
         "train_loss": 3.0 - e / 50}) + "\n" for e in epochs))
    (run_dir / "summary.json").write_text("{}")
  claims = report.summarize(str(tmp_path))["claims"]
  assert [c["verdict"] for c in claims] == ["cannot be judged", "cannot be judged", "holds"]
  for c in claims[:2]:
    assert "scratch was evaluated at 50 of its first 100 epochs" in c["evidence"] or \
        "scratch was evaluated at 15 of its first 30 epochs" in c["evidence"]
    assert "eval_every_epochs" in c["evidence"]
  assert claims[2]["rests_on"] == "scratch: seed 0, epochs 2-100"


def test_claim_3_needs_scratch_to_run_through_its_window(tmp_path):
  # Lowest at epoch 50, 5% up at epoch 70: it may still fall below that before epoch 80.
  epochs = np.arange(1, 71)
  loss = np.where(epochs <= 50, 3.0 - 1.5 * epochs / 50, 1.5 + 0.004 * (epochs - 50))
  verdicts, claims = _study(tmp_path, loss, 0.01 * epochs, 3.0 - 0.02 * epochs,
                            2.0 - 0.01 * epochs[:30], 0.3 + 0.01 * epochs[:30])
  assert verdicts[2] == ("cannot be judged", None)
  assert "scratch ran only 70 of 80 epochs" in claims[2]["evidence"]


def test_every_verdict_names_the_seeds_and_epochs_it_rests_on(tmp_path):
  _, claims = _study(tmp_path, [3.0, 2.5, 2.2], [0.1, 0.2, 0.25], [3.0, 2.6, 2.3],
                     [2.8, 2.6, 2.4], [0.15, 0.22, 0.3], seeds=(4, 7))
  rests = "scratch: seeds 4, 7, epochs 1-3; transfer_full: seeds 4, 7, epochs 1-3"
  assert [c["rests_on"] for c in claims] == [rests, rests, "scratch: seeds 4, 7, epochs 1-3"]
  md = (tmp_path / "report" / "report.md")
  report.write_report(str(tmp_path))
  assert md.read_text().count(f"Rests on {rests}.") == 2


def test_unfinished_runs_are_listed_and_left_out_of_the_figures(tmp_path):
  """Seed 1 of scratch stopped at epoch 40 of 100 (SIGTERM); seed 0 finished. By default the
  figures come from seed 0's 100 epochs and report.md names seed 1 and how far it got; counted
  in, the curves are cut to 40 epochs and the report says so."""
  acc = list(np.linspace(0.1, 0.5, 100))
  _run(tmp_path / "scratch" / "seed_0", 0, acc)
  _run(tmp_path / "scratch" / "seed_1", 1, acc[:40], finished=False, epochs=100, events=[
      {"event": "interrupted", "signal": "SIGTERM", "step": 400, "epoch": 40}])
  _run(tmp_path / "transfer" / "seed_0", 0, acc[:5], finished=False, mode="transfer", events=[
      {"event": "diverged", "step": 31, "epoch": 4, "last_checkpoint": "none"}])
  summary = report.summarize(str(tmp_path))
  scratch = summary["experiments"]["scratch"]
  assert scratch["seeds"] == [0] and scratch["epochs"][-1] == 100 and scratch["cut"] is None
  assert scratch["final"]["test_accuracy"]["mean"] == pytest.approx(0.5)
  assert "transfer" not in summary["experiments"]
  assert summary["claims"][0]["evidence"] == "no finished transfer runs to compare"
  assert {r["run"]: (r["epoch"], r["epochs"], r["state"]) for r in summary["unfinished"]} == {
      "scratch/seed_1": (40, 100, "interrupted by SIGTERM at step 400"),
      "transfer/seed_0": (5, 5, "diverged at step 31 (epoch 4)")}
  out = report.write_report(str(tmp_path))
  md = (tmp_path / "report" / "report.md").read_text()
  assert "- `scratch/seed_1` (scratch, seed 1): evaluated up to epoch 40 of 100; interrupted " \
         "by SIGTERM at step 400" in md
  assert "Not counted in any figure above" in md
  assert "Not finished, so not drawn: `transfer`." in md
  assert out == str(tmp_path / "report")

  counted = report.summarize(str(tmp_path), include_unfinished=True)
  scratch = counted["experiments"]["scratch"]
  assert scratch["seeds"] == [0, 1] and scratch["epochs"][-1] == 40
  assert scratch["cut"] == {"to_epoch": 40, "longest_epoch": 100}
  report.write_report(str(tmp_path), include_unfinished=True)
  md = (tmp_path / "report" / "report.md").read_text()
  assert "- `scratch`: its curves and figures cover epochs 1-40, the epochs all its seeds " \
         "evaluated; its longest seed reached epoch 100." in md


def test_a_workdir_with_only_unfinished_runs_says_so(tmp_path):
  _run(tmp_path / "scratch", 0, [0.1, 0.2, 0.3], finished=False, epochs=10)
  with pytest.raises(report.UserError, match=r"holds no finished scratch or transfer run, only "
                     r"unfinished ones \(scratch at epoch 3\): rerun the command"):
    report.require_runs(str(tmp_path))
  assert report.require_runs(str(tmp_path), include_unfinished=True)["experiments"]["scratch"][
      "seeds"] == [0]


def test_loss_plot_is_on_a_log_axis_with_bands_inside_the_seeds_range(tmp_path, monkeypatch):
  """Scratch's early test losses spike to 224 on one seed (BatchNorm statistics after a few
  steps): a log axis keeps the later epochs readable, and the band (min-max over seeds) never
  goes below the lowest seed, where mean - std would reach -13."""
  spikes = {0: [26, 3.0, 2.5, 2.4], 1: [41, 3.1, 2.6, 2.5], 2: [224, 3.2, 2.7, 2.6]}
  for seed, losses in spikes.items():
    _run(tmp_path / "scratch" / f"seed_{seed}", seed, [0.1, 0.2, 0.3, 0.4], losses=losses)
  e = report.summarize(str(tmp_path))["experiments"]["scratch"]
  mean, std = e["curves"]["test_loss"]["mean"][0], e["curves"]["test_loss"]["std"][0]
  assert mean - std < 0  # what the old band drew
  axes = {}
  real = plots._save

  def keep(fig, ax, xlabel, ylabel, path):
    axes[os.path.basename(path)] = (ax.get_yscale(), [c.get_paths()[0].vertices[:, 1]
                                                      for c in ax.collections], ylabel)
    real(fig, ax, xlabel, ylabel, path)

  monkeypatch.setattr(plots, "_save", keep)
  report.write_report(str(tmp_path))
  scale, bands, label = axes["loss.png"]
  assert scale == "log" and label == "test loss (log scale)"
  assert len(bands) == 1 and bands[0].min() == pytest.approx(2.4)
  assert bands[0].max() == pytest.approx(224)
  scale, bands, _ = axes["accuracy.png"]
  assert scale == "linear" and 0.1 - 1e-9 <= bands[0].min() and bands[0].max() <= 0.4 + 1e-9
