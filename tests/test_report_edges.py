"""The report at the edges real studies hit: a non-finite evaluation, a seed cut short, sparse
evaluations, ties. Run folders with chosen curves are written directly; each verdict is checked
against the one the curves support, over several layouts (the rule, not one example)."""

import json

import numpy as np
import pytest

from tlflax.study import report

EPOCHS = np.arange(1, 101)
# The study's shape: scratch's test loss lowest (1.5) at epoch 60 then rising, its train loss
# falling, accuracy 0.30 at epoch 30; transfer (40 epochs) below 1.5 from epoch 11.
SCRATCH = {"test_loss": np.where(EPOCHS <= 60, 3.0 - 1.5 * EPOCHS / 60,
                                 1.5 + 0.02 * (EPOCHS - 60)),
           "test_accuracy": np.minimum(0.01 * EPOCHS, 0.45),
           "train_loss": 3.0 - 2.9 * EPOCHS / 100}
T = np.arange(1, 41)
TRANSFER = {"test_loss": 2.0 - 0.05 * T, "test_accuracy": 0.2 + 0.0126 * T,
            "train_loss": 2.0 - 0.04 * T}


def _write(root, exp, mode, seed, curves, epochs=None, finished=True):
  """A run folder of a study: config.json, metrics.jsonl with `curves` at `epochs` (default
  1..len), summary.json when finished."""
  run_dir = root / exp / f"seed_{seed}"
  run_dir.mkdir(parents=True)
  n = len(curves["test_loss"])
  epochs = [int(e) for e in epochs] if epochs is not None else list(range(1, n + 1))
  (run_dir / "config.json").write_text(json.dumps({
      "mode": mode, "seed": seed, "target": {"epochs": epochs[-1], "min_steps": 0},
      "study": {"experiment": exp, "arm": "full" if mode == "transfer" else None, "budget": 0}}))
  lines = [{"epoch": int(e), "step": 10 * int(e),
            **{k: float(v[e - 1]) for k, v in curves.items()}} for e in epochs]
  (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  if finished:
    (run_dir / "summary.json").write_text(json.dumps({"mode": mode, "seed": seed}))


def _offset(curves, d):
  return {k: np.asarray(v, float) + d for k, v in curves.items()}


def _study(root, scratch=SCRATCH, transfer=TRANSFER, scratch_epochs=None, edit=None):
  """Two seeds of each (offsets -d, +d, so the means are the curves given); `edit(exp, seed,
  curves)` may change a seed's curves before they are written."""
  for exp, mode, curves, epochs in (("scratch", "scratch", scratch, scratch_epochs),
                                    ("transfer_full", "transfer", transfer, None)):
    for seed, d in ((0, -0.001), (1, 0.001)):
      c = _offset(curves, d)
      if edit:
        edit(exp, seed, c)
      _write(root, exp, mode, seed, c, epochs)
  return report.summarize(str(root))


def _verdicts(summary):
  return [(c["verdict"], c["epoch"]) for c in summary["claims"]]


@pytest.mark.parametrize("key,epoch,value,decisive", [
    ("test_loss", 1, np.nan, False), ("test_loss", 37, np.nan, False),
    ("test_loss", 99, np.inf, False), ("train_loss", 61, np.nan, False),
    ("test_loss", 60, np.nan, True), ("test_accuracy", 30, np.nan, True)])
def test_one_non_finite_evaluation_changes_no_verdict_and_is_named(tmp_path, key, epoch, value,
                                                                   decisive):
  """Scratch seed 0's `key` is non-finite at `epoch`: the means there are seed 1's value, so the
  verdicts stay; where that epoch is the compared extreme itself (`decisive`: scratch's lowest
  loss at 60, its best accuracy in 30 epochs at 30), the floor moves by seed 1's offset and the
  epoch transfer first beats it may move by one."""
  clean = _study(tmp_path / "clean")

  def poison(exp, seed, curves):
    if (exp, seed) == ("scratch", 0):
      curves[key][epoch - 1] = value

  summary = _study(tmp_path / "nan", edit=poison)
  assert _verdicts(clean) == [("holds", 11), ("holds", 8), ("holds", 60)]
  assert [v for v, _ in _verdicts(summary)] == ["holds"] * 3
  if not decisive:
    assert _verdicts(summary) == _verdicts(clean)
  else:
    assert all(abs(a[1] - b[1]) <= 1 for a, b in zip(_verdicts(summary), _verdicts(clean)))
  assert summary["nonfinite"] == [{"run": "scratch/seed_0", "epoch": epoch, "key": key,
                                   "value": str(float(value))}]
  s = summary["experiments"]["scratch"]
  assert s["min_test_loss"]["n"] == 2 and s["min_test_loss_epoch"]["n"] == 2
  assert s["min_test_loss_epoch"]["mean"] == pytest.approx(
      60.5 if (key, epoch) == ("test_loss", 60) else 60)  # seed 0's lowest is then at 61
  curve = s["curves"][key]
  assert curve["n"][epoch - 1] == 1 and curve["std"][epoch - 1] is None
  assert curve["mean"][epoch - 1] == pytest.approx(SCRATCH[key][epoch - 1] + 0.001)
  json.dumps(summary, allow_nan=False)  # summary.json holds no NaN
  out = report.write_report(str(tmp_path / "nan"))
  md = (tmp_path / "nan" / "report" / "report.md").read_text()
  assert out.endswith("report") and "## Non-finite values" in md
  assert f"- `scratch/seed_0` epoch {epoch}: `{key}` = {float(value)}" in md
  assert " nan" not in md.split("## Non-finite values")[0]
  json.loads((tmp_path / "nan" / "report" / "summary.json").read_text(),
             parse_constant=lambda c: pytest.fail(f"summary.json holds {c}"))


def test_a_seed_whose_every_value_is_non_finite_is_counted_out_of_the_table(tmp_path):
  def poison(exp, seed, curves):
    if (exp, seed) == ("scratch", 1):
      curves["test_loss"][:] = np.nan

  summary = _study(tmp_path, edit=poison)
  s = summary["experiments"]["scratch"]
  assert s["min_test_loss"] == {"mean": pytest.approx(1.499), "std": None, "n": 1,
                                "min": pytest.approx(1.499), "max": pytest.approx(1.499)}
  report.write_report(str(tmp_path))
  md = (tmp_path / "report" / "report.md").read_text()
  row = next(line for line in md.splitlines() if line.startswith("| scratch |"))
  assert "1.4990 (1 of 2 seeds)" in row and "± 0.0000" not in md
  assert len([p for p in summary["nonfinite"] if p["run"] == "scratch/seed_1"]) == 100


@pytest.mark.parametrize("transfer_low,verdict", [(1.55, "does not hold"), (1.45, "holds")])
def test_a_seed_cut_short_does_not_decide_the_claims_it_cannot_cover(tmp_path, transfer_low,
                                                                      verdict):
  """Scratch seed 0 runs 100 epochs (lowest 1.50 at epoch 60); seed 1 finished after 30, its
  loss still falling. Claims 1 and 3 read scratch's whole run: they rest on seed 0 alone and say
  so; claim 2 reads its first 30 epochs, which both seeds cover."""
  _write(tmp_path, "scratch", "scratch", 0, SCRATCH)
  _write(tmp_path, "scratch", "scratch", 1, {k: v[:30] for k, v in SCRATCH.items()})
  transfer = {**TRANSFER, "test_loss": np.maximum(2.0 - 0.05 * T, transfer_low)}
  for seed in (0, 1):
    _write(tmp_path, "transfer_full", "transfer", seed, transfer)
  summary = report.summarize(str(tmp_path))
  claims = summary["claims"]
  assert claims[0]["verdict"] == verdict
  assert "1.5000 (epoch 60 of 100)" in claims[0]["evidence"]
  left = "seed 1 left out: it stopped at epoch 30, before epoch 100"
  assert claims[0]["rests_on"].startswith(f"scratch: seed 0, epochs 1-100 ({left})")
  assert claims[1]["rests_on"].startswith("scratch: seeds 0, 1, epochs 1-30;")
  assert _verdicts(summary)[2] == ("holds", 60) and left in claims[2]["rests_on"]
  s = summary["experiments"]["scratch"]  # the table: each seed's own run, its finite values
  assert s["min_test_loss"]["min"] == pytest.approx(1.5) and s["cut"]["to_epoch"] == 30


@pytest.mark.parametrize("step,low,expected,decides", [
    (25, 50, "cannot be judged", "anywhere in epochs 26-74: eval_every_epochs <= 11"),
    (10, 60, "holds", "anywhere in epochs 51-69, inside 40-80"),
    (20, 20, "does not hold", "anywhere in epochs 1-39: it overfits after about epoch 20"),
    (25, 25, "cannot be judged", "anywhere in epochs 1-49: eval_every_epochs <= 15"),
    (5, 85, "does not hold", "anywhere in epochs 81-89: it overfits after about epoch 85"),
    (1, 45, "holds", None)])
def test_claim_3_reads_the_lowest_loss_as_a_bracket_between_evaluations(tmp_path, step, low,
                                                                        expected, decides):
  loss = np.where(EPOCHS <= low, 3.0 - 1.5 * EPOCHS / low, 1.5 + 0.02 * (EPOCHS - low))
  epochs = [e for e in EPOCHS if e % step == 0]
  summary = _study(tmp_path, scratch={**SCRATCH, "test_loss": loss}, scratch_epochs=epochs)
  c = summary["claims"][2]
  assert c["verdict"] == expected
  assert c["epoch"] == (None if expected == "cannot be judged" else low)
  if decides:
    assert decides in c["evidence"]


def test_claim_3_without_a_visible_rise_between_sparse_evaluations_cannot_be_judged(tmp_path):
  flat = np.where(EPOCHS <= 50, 3.0 - 1.5 * EPOCHS / 50, 1.5 + 0.0001 * (EPOCHS - 50))
  summary = _study(tmp_path, scratch={**SCRATCH, "test_loss": flat},
                   scratch_epochs=[e for e in EPOCHS if e % 25 == 0])
  c = summary["claims"][2]
  assert c["verdict"] == "cannot be judged" and "eval_every_epochs=1" in c["evidence"]
  every = _study(tmp_path / "every", scratch={**SCRATCH, "test_loss": flat})
  assert every["claims"][2]["verdict"] == "does not hold"  # evaluated every epoch: no rise


@pytest.mark.parametrize("first,second,expected", [(45, 85, ("does not hold", 85)),
                                                   (50, 70, ("holds", 70))])
def test_a_tied_lowest_loss_names_the_epoch_after_which_it_rises(tmp_path, first, second,
                                                                  expected):
  loss = np.full(100, 2.0)
  loss[first - 1] = loss[second - 1] = 1.5
  loss[second:] = 1.5 + 0.02 * (EPOCHS[second:] - second)
  summary = _study(tmp_path, scratch={**SCRATCH, "test_loss": loss})
  assert _verdicts(summary)[2] == expected
