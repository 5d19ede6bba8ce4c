"""The study's report, from the metrics on disk: its claims checked, its experiments summed up.

Reads every run folder of a workdir: `DIR/<experiment>/seed_N/` (as `--mode=compare` writes
them) and `DIR/scratch/`, `DIR/transfer/` (single-mode runs), each seed of an experiment counted
once, and writes `DIR/report/`:
  report.md     the study's three claims with a verdict each (`claims.py`), a table of every
                experiment, every non-finite value and every unfinished run folder with how
                far it got (`markdown.py`)
  summary.json  every experiment: budget, seeds, per-epoch mean, std, min, max and count over
                seeds, each seed's curves, best and final figures; the non-finite values; the
                unfinished runs
  loss.png, accuracy.png, time.png, labels.png   the figures (`plots.py`)
Only finished runs (with summary.json) count, unless `include_unfinished`; an experiment with no
finished run is listed as not finished, not drawn. "Best" is the epoch of best validation
accuracy where the runs have a validation split, else of best test accuracy, which the report
then says. Nothing is trained here: redraw it at any time.
"""

import dataclasses
import json
import os

import numpy as np

from tlflax.errors import UserError
from tlflax.io import rundir, storage
from tlflax.io.rundir import read_json
from tlflax.study import claims, markdown, plots
from tlflax.train.monitor import read_events, read_metrics

CURVE_KEYS = ("test_loss", "test_accuracy", "train_loss", "val_loss", "val_accuracy", "wall_s")


# ------------------------------------------------------------------------------------------------
# Runs on disk
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Group:
  """The runs of one experiment (one per seed)."""

  name: str
  mode: str
  arm: str | None
  budget: int
  runs: list = dataclasses.field(default_factory=list)
  seeds: list = dataclasses.field(default_factory=list)
  summaries: list = dataclasses.field(default_factory=list)  # {} for an unfinished run
  arm_order: int = 0


def _folders(workdir: str) -> list[rundir.TargetRun]:
  """Every scratch or transfer run folder of `workdir` with metrics or a summary."""
  return [f for f in rundir.target_runs(workdir) if f.finished or read_metrics(f.run_dir)]


def _groups(folders: list[rundir.TargetRun]) -> dict[str, _Group]:
  """The experiments of `folders`, each seed counted once (`rundir.one_per_seed`)."""
  groups: dict[str, _Group] = {}
  for f in rundir.one_per_seed(folders):
    mode = f.config["mode"]
    arm = (f.config.get("study") or {}).get("arm") if mode == "transfer" else None
    g = groups.setdefault(f.name, _Group(f.name, mode, arm, f.budget))
    arms = list((f.config.get("arms") or {}).keys())
    g.arm_order = arms.index(arm) if arm in arms else len(arms)
    g.runs.append(f.run_dir)
    g.seeds.append(f.config.get("seed"))
    g.summaries.append(f.summary or {})
  return dict(sorted(groups.items(), key=lambda kv: (
      plots.budget_rank(kv[1].budget), kv[1].mode != "scratch", kv[1].arm_order, kv[0])))


def _planned_epochs(config: dict, records: list[dict]) -> int | None:
  """The epochs a run was set to train: target.epochs, raised by min_steps (as `fit` does, with
  the steps per epoch its records show)."""
  target = config.get("target") or {}
  epochs, min_steps = target.get("epochs"), target.get("min_steps") or 0
  if epochs is None:
    return None
  last = records[-1] if records else None
  if min_steps and last and last.get("step") and last.get("epoch"):
    epochs = max(epochs, -(-min_steps // (last["step"] // last["epoch"])))
  return int(epochs)


def _unfinished(workdir: str, f: rundir.TargetRun) -> dict:
  """How far an unfinished run folder got, and why it stopped where its metrics say."""
  records, events = read_metrics(f.run_dir), read_events(f.run_dir)
  last = events[-1] if events else None
  if last and last["event"] == "diverged":
    state = f"diverged at step {last['step']} (epoch {last['epoch']})"
  elif last and last["event"] == "interrupted" and (not records or
                                                     records[-1]["step"] <= last["step"]):
    state = f"interrupted by {last.get('signal', 'a signal')} at step {last['step']}"
  else:
    state = "no summary.json: still training, or killed or crashed without a trace"
  return {"run": os.path.relpath(f.run_dir, workdir), "experiment": f.name,
          "seed": f.config.get("seed"), "epoch": records[-1]["epoch"] if records else 0,
          "epochs": _planned_epochs(f.config, records), "state": state}


def find_runs(workdir: str, experiment: str) -> list[str]:
  """The finished run folders (one per seed) of an experiment of `workdir`."""
  g = _groups([f for f in _folders(workdir) if f.finished]).get(experiment)
  return sorted(g.runs) if g else []


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------


def _finite(value) -> bool:
  return value is not None and bool(np.isfinite(value))


def _mean_std(values) -> dict | None:
  """Mean, sample std (ddof=1; None for one value), count, min and max of the finite values."""
  values = np.asarray([v for v in values if _finite(v)], dtype=float)
  if not values.size:
    return None
  return {"mean": float(values.mean()),
          "std": float(values.std(ddof=1)) if values.size > 1 else None,
          "n": int(values.size), "min": float(values.min()), "max": float(values.max())}


def _curve(values: np.ndarray) -> dict:
  """Per-epoch mean, sample std (None for one seed), min, max and count of the finite values of
  a [seed][epoch] array; an epoch with no finite value is None throughout."""
  stats = [_mean_std(column) for column in values.T]
  pick = lambda k: [s[k] if s else None for s in stats]
  return {"mean": pick("mean"),
          "std": [s["std"] if s else None for s in stats] if len(values) > 1 else None,
          "min": pick("min"), "max": pick("max"), "n": pick("n")}


def _extreme(records: list[dict], key: str, best) -> dict | None:
  """The record of a seed whose finite `key` is `best` (min or max), the earliest of equals."""
  finite = [r for r in records if _finite(r.get(key))]
  if not finite:
    return None
  sign = 1 if best is min else -1
  return min(finite, key=lambda r: (sign * r[key], r["epoch"]))


def _experiment(workdir: str, g: _Group) -> dict | None:
  """The figures of one experiment over its seeds (None when its runs share no evaluated
  epoch). Curves are cut to the epochs every seed evaluated (`cut` says so when one seed ran
  further); each seed's own figures (best, final, lowest loss) come from its whole run, its
  finite values only; `seed_curves` keeps every seed's curves for the claims."""
  records = [{r["epoch"]: r for r in read_metrics(d) if "test_accuracy" in r} for d in g.runs]
  epochs = sorted(set.intersection(*(set(r) for r in records)))
  if not epochs:
    return None
  rows = [[r[e] for e in epochs] for r in records]  # [seed][epoch] records
  whole = [[r[e] for e in sorted(r)] for r in records]  # each seed's every record
  select = "val" if all("val_accuracy" in x for row in rows for x in row) else "test"
  best = [_extreme(row, f"{select}_accuracy", max) for row in whole]
  curves = {key: _curve(np.array([[_float(x[key]) for x in row] for row in rows], dtype=float))
            for key in CURVE_KEYS if all(key in x for row in rows for x in row)}
  lowest = [_extreme(row, "test_loss", min) for row in whole]
  per_class = [s["train_examples"] / s["num_classes"] for s in g.summaries
               if s.get("train_examples") and s.get("num_classes")]
  longest = max(max(r) for r in records)
  pick = lambda chosen, key: [c[key] if c else None for c in chosen]
  out = {
      "name": g.name, "mode": g.mode, "arm": g.arm, "budget": g.budget,
      "examples_per_class": (float(np.mean(per_class)) if per_class else
                             (float(g.budget) if g.budget else None)),
      "seeds": g.seeds, "runs": [os.path.relpath(r, workdir) for r in g.runs],
      "epochs": epochs, "curves": curves, "selected_on": select,
      "cut": ({"to_epoch": epochs[-1], "longest_epoch": longest} if longest > epochs[-1]
              else None),
      "best": {"epoch": _mean_std(pick(best, "epoch")),
               "test_accuracy": _mean_std(pick(best, "test_accuracy"))},
      "final": {"test_accuracy": _mean_std([row[-1]["test_accuracy"] for row in whole]),
                "test_loss": _mean_std([row[-1]["test_loss"] for row in whole])},
      "min_test_loss": _mean_std(pick(lowest, "test_loss")),
      "min_test_loss_epoch": _mean_std(pick(lowest, "epoch")),
      "wall_s": _mean_std([s.get("wall_s") for s in g.summaries]),
      "seed_curves": {str(seed): {"epochs": [x["epoch"] for x in row],
                                  **{k: [_float(x[k]) if _finite(_float(x[k])) else None
                                         for x in row]
                                     for k in CURVE_KEYS if all(k in x for x in row)}}
                      for seed, row in zip(g.seeds, whole, strict=True)},
      "nonfinite": [{"run": os.path.relpath(d, workdir), "epoch": x["epoch"], "key": k,
                     "value": str(x[k])}
                    for d, row in zip(g.runs, whole, strict=True) for x in row
                    for k in CURVE_KEYS if k in x and not _finite(_float(x[k]))],
  }
  if select == "val":
    out["best"]["val_accuracy"] = _mean_std(pick(best, "val_accuracy"))
  return out


def _float(value) -> float:
  """A metric as a float (None, and what json writes as NaN or Infinity, stay non-finite)."""
  return float("nan") if value is None else float(value)


def _study_pair(experiments: dict) -> tuple[dict | None, dict | None]:
  """(scratch, transfer) the claims are judged on: at the largest label budget, the study's arm
  ('full', or a single --mode=transfer run, else the first arm)."""
  if not experiments:
    return None, None
  at = plots.main_budget(experiments)
  scratch = next((e for e in at if e["mode"] == "scratch"), None)
  transfers = [e for e in at if e["mode"] == "transfer"]
  transfer = next((e for e in transfers if e["arm"] == "full"), None) or next(
      (e for e in transfers if e["arm"] is None), None) or (transfers[0] if transfers else None)
  return scratch, transfer


def summarize(workdir: str, include_unfinished: bool = False) -> dict:
  """The numbers of the study for every experiment in `workdir`, and the claims. Only finished
  runs (with summary.json) count unless `include_unfinished`; `unfinished` lists the others
  either way."""
  folders = _folders(workdir)
  experiments = {}
  for name, g in _groups([f for f in folders if f.finished or include_unfinished]).items():
    e = _experiment(workdir, g)
    if e is not None:
      experiments[name] = e
  out: dict = {"workdir": storage.absolute(workdir), "experiments": experiments,
               "include_unfinished": include_unfinished,
               "unfinished": [_unfinished(workdir, f) for f in folders if not f.finished]}
  scratch, transfer = _study_pair(experiments)
  out["claims_on"] = {"scratch": scratch and scratch["name"],
                      "transfer": transfer and transfer["name"]}
  out["claims"] = claims.judge_claims(scratch, transfer)
  out["nonfinite"] = [p for e in experiments.values() for p in e["nonfinite"]]
  pretrain = read_json(os.path.join(workdir, "pretrain", "summary.json"))
  if pretrain:
    out["pretrain"] = {"dataset": pretrain.get("dataset"), "wall_s": pretrain.get("wall_s"),
                       "final_test_accuracy": (pretrain.get("final") or {}).get("test_accuracy")}
  return out


def require_runs(workdir: str, include_unfinished: bool = False) -> dict:
  """The summary of `workdir`, or a `UserError` when it holds nothing to report."""
  summary = summarize(workdir, include_unfinished)
  if not summary["experiments"]:
    runs = summary["unfinished"]
    if runs:
      listed = ", ".join(f"{r['run']} at epoch {r['epoch']}" for r in runs[:5]) + (
          ", ..." if len(runs) > 5 else "")
      raise UserError(f"{workdir} holds no finished scratch or transfer run, only unfinished ones "
                      f"({listed}): rerun the command that started them to finish them, or pass "
                      "--config.report.include_unfinished=true")
    raise UserError(f"{workdir} holds no scratch or transfer runs with metrics: run "
                    "--mode=compare (or --mode=scratch / --mode=transfer) there first")
  return summary


def _arms(workdir: str, summary: dict) -> dict:
  """The transfer arms' overrides, from the config of a run of each."""
  out = {}
  for e in summary["experiments"].values():
    if e["mode"] == "transfer" and e["arm"] and e["arm"] not in out:
      config = read_json(os.path.join(workdir, e["runs"][0], "config.json")) or {}
      out[e["arm"]] = (config.get("arms") or {}).get(e["arm"], {})
  return out


def write_report(workdir: str, summary: dict | None = None,
                 include_unfinished: bool = False) -> str:
  """Writes DIR/report/ from the metrics on disk (summarised by `require_runs` unless given)
  and returns that folder."""
  summary = summary or require_runs(workdir, include_unfinished)
  out = storage.join(workdir, "report")
  storage.makedirs(out)
  summary["arms"] = _arms(workdir, summary)
  summary["figures"] = plots.draw(summary, out)
  storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2))
  storage.write_text(storage.join(out, "report.md"), markdown.markdown(summary))
  return out
