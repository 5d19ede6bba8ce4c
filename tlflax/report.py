"""The study's report, from the metrics on disk: its claims checked, curves, label budgets, time.

Reads every run folder of a workdir: `DIR/<experiment>/seed_N/` (as `--mode=compare` writes
them) and `DIR/scratch/`, `DIR/transfer/` (single-mode runs), each seed of an experiment counted
once, and writes `DIR/report/`:
  report.md     the study's three claims with a verdict each, then a table of every experiment
  summary.json  every experiment: budget, seeds, per-epoch means and stds, best and final figures
  loss.png, accuracy.png   test curves (mean ± std over seeds) at the largest label budget
  time.png      test accuracy against wall-clock seconds, transfer shifted by the pretraining
  labels.png    test accuracy against labelled examples per class (with two budgets or more)
"Best" is the epoch of best validation accuracy where the runs have a validation split, else of
best test accuracy, which the report then says. Nothing is trained here: redraw it at any time.
"""

import dataclasses
import glob
import json
import math
import os

import numpy as np

from tlflax.errors import UserError
from tlflax.monitor import best_record, read_metrics
from tlflax.rundir import read_json

# The study's claims, and the epochs they name.
WITHIN_EPOCHS = 25  # claims 1 and 2: transfer gets there within this many epochs
SCRATCH_EPOCHS = 30  # claim 2: what scratch reaches in this many epochs
OVERFIT_EPOCH = 60  # claim 3: scratch overfits after about this many epochs ...
OVERFIT_WINDOW = (40, 80)  # ... read as: its test loss is lowest in this range of epochs
RISE = 0.01  # ... and then ends at least 1% above that minimum while its train loss still falls
CLAIMS = (
    f"Transfer reaches a lower test loss than scratch ever does, within {WITHIN_EPOCHS} epochs.",
    (f"Transfer reaches, within {WITHIN_EPOCHS} epochs, a test accuracy that scratch does not "
     f"reach in {SCRATCH_EPOCHS}."),
    (f"Scratch overfits after about {OVERFIT_EPOCH} epochs (its test loss is lowest at an epoch "
     f"in {OVERFIT_WINDOW[0]}-{OVERFIT_WINDOW[1]} and rises afterwards while its train loss "
     "still falls)."))
HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot be judged"

_SCRATCH_COLOUR, _STUDY_COLOUR = "tab:red", "tab:blue"
_PALETTE = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan", "tab:gray")
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
  arm_order: int = 0


def _groups(workdir: str) -> dict[str, _Group]:
  """Every experiment with metrics in `workdir`. A seed counts once per experiment: a seed_N
  folder wins over a single-mode run folder of the same seed."""
  found = []  # (experiment, seeded, run_dir, config, budget)
  for base in sorted(glob.glob(os.path.join(workdir, "*"))):
    for run_dir in [base] + sorted(glob.glob(os.path.join(base, "seed_*"))):
      config = read_json(os.path.join(run_dir, "config.json")) or {}
      if config.get("mode") not in ("scratch", "transfer") or not read_metrics(run_dir):
        continue
      budget = int((config.get("target") or {}).get("examples_per_class") or 0)
      name = (config.get("study") or {}).get("experiment") or (
          os.path.basename(base) + (f"_{budget}shot" if budget else ""))  # as a study names it
      found.append((name, run_dir != base, run_dir, config, budget))
  groups: dict[str, _Group] = {}
  for name, _, run_dir, config, budget in sorted(found, key=lambda f: not f[1]):  # seeded first
    arm = (config.get("study") or {}).get("arm") if config["mode"] == "transfer" else None
    g = groups.setdefault(name, _Group(name, config["mode"], arm, budget))
    arms = list((config.get("arms") or {}).keys())
    g.arm_order = arms.index(arm) if arm in arms else len(arms)
    if config.get("seed") in g.seeds:
      continue
    g.runs.append(run_dir)
    g.seeds.append(config.get("seed"))
  return dict(sorted(groups.items(), key=lambda kv: (
      _budget_rank(kv[1].budget), kv[1].mode != "scratch", kv[1].arm_order, kv[0])))


def _budget_rank(budget: int) -> float:
  return -math.inf if budget == 0 else -budget  # all labels first, then larger budgets first


def _main_budget(experiments: dict) -> list[dict]:
  """The experiments at the largest label budget (all labels, if any ran on all)."""
  budget = min((e["budget"] for e in experiments.values()), key=_budget_rank)
  return [e for e in experiments.values() if e["budget"] == budget]


def find_runs(workdir: str, experiment: str) -> list[str]:
  """The run folders (one per seed) of an experiment of `workdir`."""
  g = _groups(workdir).get(experiment)
  return sorted(g.runs) if g else []


# ------------------------------------------------------------------------------------------------
# Numbers
# ------------------------------------------------------------------------------------------------


def _mean_std(values) -> dict | None:
  values = np.asarray([v for v in values if v is not None], dtype=float)
  values = values[np.isfinite(values)]
  if not values.size:
    return None
  return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def _experiment(workdir: str, g: _Group) -> dict | None:
  """The figures of one experiment over its seeds (None when its runs share no evaluated
  epoch)."""
  records = [{r["epoch"]: r for r in read_metrics(d) if "test_accuracy" in r} for d in g.runs]
  epochs = sorted(set.intersection(*(set(r) for r in records)))
  if not epochs:
    return None
  rows = [[r[e] for e in epochs] for r in records]  # [seed][epoch] records
  select = "val" if all("val_accuracy" in x for row in rows for x in row) else "test"
  best = [best_record(row, f"{select}_accuracy") for row in rows]
  curves = {}
  for key in CURVE_KEYS:
    if all(key in x for row in rows for x in row):
      values = np.array([[x[key] for x in row] for row in rows], dtype=float)
      curves[key] = {"mean": values.mean(0).tolist(), "std": values.std(0).tolist()}
  lowest = [min(row, key=lambda x: (x["test_loss"], x["epoch"])) for row in rows]
  summaries = [read_json(os.path.join(d, "summary.json")) or {} for d in g.runs]
  per_class = [s["train_examples"] / s["num_classes"] for s in summaries
               if s.get("train_examples") and s.get("num_classes")]
  out = {
      "name": g.name, "mode": g.mode, "arm": g.arm, "budget": g.budget,
      "examples_per_class": (float(np.mean(per_class)) if per_class else
                             (float(g.budget) if g.budget else None)),
      "seeds": g.seeds, "runs": [os.path.relpath(r, workdir) for r in g.runs],
      "epochs": epochs, "curves": curves, "selected_on": select,
      "best": {"epoch": _mean_std([b["epoch"] for b in best]),
               "test_accuracy": _mean_std([b["test_accuracy"] for b in best])},
      "final": {"test_accuracy": _mean_std([row[-1]["test_accuracy"] for row in rows]),
                "test_loss": _mean_std([row[-1]["test_loss"] for row in rows])},
      "min_test_loss": _mean_std([x["test_loss"] for x in lowest]),
      "min_test_loss_epoch": _mean_std([x["epoch"] for x in lowest]),
      "wall_s": _mean_std([s.get("wall_s") for s in summaries]),
  }
  if select == "val":
    out["best"]["val_accuracy"] = _mean_std([b["val_accuracy"] for b in best])
  return out


def _study_pair(experiments: dict) -> tuple[dict | None, dict | None]:
  """(scratch, transfer) the claims are judged on: at the largest label budget, the study's arm
  ('full', or a single --mode=transfer run, else the first arm)."""
  if not experiments:
    return None, None
  at = _main_budget(experiments)
  scratch = next((e for e in at if e["mode"] == "scratch"), None)
  transfers = [e for e in at if e["mode"] == "transfer"]
  transfer = next((e for e in transfers if e["arm"] == "full"), None) or next(
      (e for e in transfers if e["arm"] is None), None) or (transfers[0] if transfers else None)
  return scratch, transfer


def _verdict(number: int, verdict: str, epoch: int | None, evidence: str) -> dict:
  return {"claim": CLAIMS[number - 1], "verdict": verdict, "epoch": epoch, "evidence": evidence}


def judge_claims(scratch: dict | None, transfer: dict | None) -> list[dict]:
  """The study's three claims judged on the mean curves (over seeds) of a scratch and a transfer
  experiment: each a verdict (holds / does not hold / cannot be judged), the epoch it names, and
  the numbers it rests on."""
  if scratch is None or transfer is None:
    missing = "scratch" if scratch is None else "transfer"
    return [_verdict(i, UNKNOWN, None, f"no {missing} runs to compare") for i in (1, 2, 3)]
  es, et = scratch["epochs"], transfer["epochs"]
  cs, ct = scratch["curves"], transfer["curves"]
  return [_claim_loss(es, cs["test_loss"]["mean"], et, ct["test_loss"]["mean"]),
          _claim_accuracy(es, cs["test_accuracy"]["mean"], et, ct["test_accuracy"]["mean"]),
          _claim_overfit(es, cs["test_loss"]["mean"], (cs.get("train_loss") or {}).get("mean"))]


def _claim_loss(es, loss_s, et, loss_t) -> dict:
  i = int(np.argmin(loss_s))
  floor = f"scratch's lowest mean test loss {loss_s[i]:.4f} (epoch {es[i]} of {es[-1]})"
  below = [(e, v) for e, v in zip(et, loss_t) if v < loss_s[i]]
  if below and below[0][0] <= WITHIN_EPOCHS:
    e, v = below[0]
    return _verdict(1, HOLDS, e, f"transfer's mean test loss {v:.4f} at epoch {e} is below "
                    f"{floor}")
  best = int(np.argmin(loss_t))
  seen = f"transfer's lowest is {loss_t[best]:.4f} at epoch {et[best]}"
  if below:
    return _verdict(1, FAILS, below[0][0], f"transfer gets below {floor} only at epoch "
                    f"{below[0][0]}, after {WITHIN_EPOCHS}")
  if et[-1] < WITHIN_EPOCHS:
    return _verdict(1, UNKNOWN, None, f"{seen}, not below {floor}, and it ran only {et[-1]} of "
                    f"{WITHIN_EPOCHS} epochs")
  return _verdict(1, FAILS, None, f"{seen}, not below {floor}")


def _claim_accuracy(es, acc_s, et, acc_t) -> dict:
  window = [i for i, e in enumerate(es) if e <= SCRATCH_EPOCHS]
  if not window or et[0] > WITHIN_EPOCHS:
    return _verdict(2, UNKNOWN, None, f"scratch has no evaluation in its first {SCRATCH_EPOCHS} "
                    f"epochs or transfer none in its first {WITHIN_EPOCHS} (see "
                    "eval_every_epochs)")
  i = max(window, key=lambda k: acc_s[k])
  bar = f"scratch's best mean test accuracy in its first {SCRATCH_EPOCHS} epochs " \
        f"({acc_s[i]:.4f}, epoch {es[i]})"
  above = [(e, v) for e, v in zip(et, acc_t) if v > acc_s[i] and e <= WITHIN_EPOCHS]
  if es[-1] < SCRATCH_EPOCHS:
    got = (f"transfer's mean test accuracy {above[0][1]:.4f} at epoch {above[0][0]} exceeds "
           f"{bar}" if above else f"transfer does not exceed {bar}")
    return _verdict(2, UNKNOWN, above[0][0] if above else None,
                    f"{got}, but scratch ran only {es[-1]} of {SCRATCH_EPOCHS} epochs")
  if above:
    e, v = above[0]
    return _verdict(2, HOLDS, e, f"transfer's mean test accuracy {v:.4f} at epoch {e} exceeds "
                    f"{bar}")
  j = max((k for k, e in enumerate(et) if e <= WITHIN_EPOCHS), key=lambda k: acc_t[k])
  seen = f"transfer's best in its first {WITHIN_EPOCHS} epochs is {acc_t[j]:.4f} (epoch {et[j]})"
  if et[-1] < WITHIN_EPOCHS:
    return _verdict(2, UNKNOWN, None, f"{seen}, not above {bar}, and it ran only {et[-1]} of "
                    f"{WITHIN_EPOCHS} epochs")
  return _verdict(2, FAILS, None, f"{seen}, not above {bar}")


def _claim_overfit(es, loss_s, train_s) -> dict:
  if train_s is None:
    return _verdict(3, UNKNOWN, None, "the scratch runs recorded no train loss")
  i = int(np.argmin(loss_s))
  rises = loss_s[-1] > loss_s[i] * (1 + RISE)
  falls = train_s[-1] < train_s[i]
  if i + 1 == len(es):
    at = (f"scratch's mean test loss is lowest at its last epoch, {es[i]} ({loss_s[i]:.4f})")
  else:
    at = (f"scratch's mean test loss is lowest at epoch {es[i]} ({loss_s[i]:.4f}) and ends at "
          f"{loss_s[-1]:.4f} (epoch {es[-1]}); its train loss goes {train_s[i]:.4f} -> "
          f"{train_s[-1]:.4f} meanwhile")
  if rises and falls:
    inside = OVERFIT_WINDOW[0] <= es[i] <= OVERFIT_WINDOW[1]
    return _verdict(3, HOLDS if inside else FAILS, es[i],
                    at + ("" if inside else f": it overfits after epoch {es[i]}, not about "
                          f"{OVERFIT_EPOCH}"))
  if es[-1] < OVERFIT_WINDOW[1]:
    return _verdict(3, UNKNOWN, None, f"{at}: no overfitting yet, and scratch ran only "
                    f"{es[-1]} epochs")
  return _verdict(3, FAILS, None, f"{at}: no overfitting in {es[-1]} epochs")


def summarize(workdir: str) -> dict:
  """The numbers of the study for every experiment present in `workdir`, and the claims."""
  experiments = {}
  for name, g in _groups(workdir).items():
    e = _experiment(workdir, g)
    if e is not None:
      experiments[name] = e
  out: dict = {"workdir": os.path.abspath(workdir), "experiments": experiments}
  scratch, transfer = _study_pair(experiments)
  out["claims_on"] = {"scratch": scratch and scratch["name"],
                      "transfer": transfer and transfer["name"]}
  out["claims"] = judge_claims(scratch, transfer)
  pretrain = read_json(os.path.join(workdir, "pretrain", "summary.json"))
  if pretrain:
    out["pretrain"] = {"dataset": pretrain.get("dataset"), "wall_s": pretrain.get("wall_s"),
                       "final_test_accuracy": (pretrain.get("final") or {}).get("test_accuracy")}
  return out


# ------------------------------------------------------------------------------------------------
# Figures
# ------------------------------------------------------------------------------------------------


def _colours(experiments: dict) -> dict[str, str]:
  """Scratch red, the study's transfer arm blue, every other arm a colour of its own (the same
  one at every budget)."""
  out, arms = {}, []
  for e in experiments.values():
    key = e["arm"] if e["mode"] == "transfer" else None
    if e["mode"] == "scratch":
      out[e["name"]] = _SCRATCH_COLOUR
    elif key in ("full", None):
      out[e["name"]] = _STUDY_COLOUR
    else:
      if key not in arms:
        arms.append(key)
      out[e["name"]] = _PALETTE[arms.index(key) % len(_PALETTE)]
  return out


def _label(name: str, seeds: list) -> str:
  return f"{name} ({len(seeds)} seed{'s' * (len(seeds) > 1)})"


def _figure():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt, plt.subplots(figsize=(6.4, 4.2), dpi=120)


def _save(plt, fig, ax, xlabel: str, ylabel: str, path: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _plot_curves(summary: dict, key: str, ylabel: str, path: str) -> None:
  import matplotlib.ticker
  plt, (fig, ax) = _figure()
  colours = _colours(summary["experiments"])
  for e in _main_budget(summary["experiments"]):
    mean, std = (np.array(e["curves"][key][k]) for k in ("mean", "std"))
    ax.plot(e["epochs"], mean, color=colours[e["name"]], label=_label(e["name"], e["seeds"]))
    if len(e["seeds"]) > 1:
      ax.fill_between(e["epochs"], mean - std, mean + std, color=colours[e["name"]], alpha=0.2,
                      linewidth=0)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  _save(plt, fig, ax, "epoch", ylabel, path)


def _plot_time(summary: dict, path: str) -> None:
  """Test accuracy against wall-clock seconds; transfer curves start after the pretraining."""
  plt, (fig, ax) = _figure()
  colours = _colours(summary["experiments"])
  shift = (summary.get("pretrain") or {}).get("wall_s") or 0.0
  for e in _main_budget(summary["experiments"]):
    if "wall_s" not in e["curves"]:
      continue
    offset = shift if e["mode"] == "transfer" else 0.0
    label = _label(e["name"], e["seeds"]) + (f", + {offset:.0f} s pretraining" if offset else "")
    ax.plot(np.array(e["curves"]["wall_s"]["mean"]) + offset,
            e["curves"]["test_accuracy"]["mean"], color=colours[e["name"]], label=label,
            marker=".")
  _save(plt, fig, ax, "wall-clock seconds (transfer: after its pretraining)",
        "test accuracy", path)


def _families(experiments: dict) -> dict[str, list[dict]]:
  """Experiments by line of labels.png: scratch, and each transfer arm, over its budgets."""
  out: dict[str, list[dict]] = {}
  for e in experiments.values():
    key = "scratch" if e["mode"] == "scratch" else f"transfer_{e['arm']}" if e["arm"] \
        else "transfer"
    if e["examples_per_class"]:
      out.setdefault(key, []).append(e)
  return out


def _plot_labels(summary: dict, path: str) -> None:
  """Test accuracy (at the best epoch as selected) against labelled examples per class."""
  plt, (fig, ax) = _figure()
  colours = _colours(summary["experiments"])
  ticks = set()
  for name, line in _families(summary["experiments"]).items():
    line = sorted(line, key=lambda e: e["examples_per_class"])
    x = np.array([e["examples_per_class"] for e in line])
    mean = np.array([e["best"]["test_accuracy"]["mean"] for e in line])
    std = np.array([e["best"]["test_accuracy"]["std"] for e in line])
    colour = colours[line[0]["name"]]
    ax.plot(x, mean, color=colour, marker="o", label=_label(name, line[0]["seeds"]))
    ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
    ticks.update(x.tolist())
  ax.set_xscale("log")
  ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
  ax.minorticks_off()
  ax.set_title(f"at each seed's best epoch, {_selection_words(summary)}", fontsize="medium")
  _save(plt, fig, ax, "labelled training examples per class (log scale)", "test accuracy", path)


def _selection_words(summary: dict) -> str:
  kinds = {e["selected_on"] for e in summary["experiments"].values()}
  if kinds == {"val"}:
    return "chosen on validation"
  return "chosen on test" if kinds == {"test"} else "chosen on validation or test"


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------


def _fmt(stat: dict | None, digits: int = 4) -> str:
  return "n/a" if stat is None else f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _budget_words(e: dict) -> str:
  if e["budget"]:
    return str(e["budget"])
  return f"all ({e['examples_per_class']:.0f})" if e["examples_per_class"] else "all"


def _markdown(summary: dict) -> str:
  exps = summary["experiments"]
  on = summary["claims_on"]
  pair = (f"Judged on the mean curves over seeds of `{on['scratch']}` and `{on['transfer']}` "
          "(the largest label budget), from the metrics on disk." if all(on.values()) else
          "They need scratch and transfer runs at one label budget.")
  lines = ["# Transfer study", "", "## The study's claims", "", pair, ""]
  for i, c in enumerate(summary["claims"], 1):
    where = f" (epoch {c['epoch']})" if c["epoch"] is not None else ""
    lines.append(f"{i}. **{c['verdict']}**{where}: {c['claim']} {c['evidence'][0].upper()}"
                 f"{c['evidence'][1:]}.")
  selected = {e["selected_on"] for e in exps.values()}
  lines += ["", "## Experiments", ""]
  if selected == {"val"}:
    lines.append("\"Best\" is the epoch of best validation accuracy of each seed, and its test "
                 "accuracy: the test set played no part in choosing it.")
  else:
    lines.append("**No validation split" + (" in some experiments" if "val" in selected else "")
                 + ": every \"best\" figure below is selected on the test set**, so it is an "
                 "optimistic estimate. Set `val_split` (and a `train_split` without it) for an "
                 "honest selection.")
  lines += ["", "Mean ± std over seeds. Curves: `loss.png`, `accuracy.png` (largest budget; "
            "scratch red, the study's transfer arm blue, other arms in their own colours), "
            "`time.png` (test accuracy against wall-clock seconds, transfer counting its "
            "pretraining)" + (", `labels.png`." if "labels.png" in summary.get("figures", ())
                             else "."), "",
            ("| experiment | labels/class | seeds | selected on | best test acc | best epoch "
             "| final test acc | min test loss | epoch of min test loss | wall-clock s |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
  for e in exps.values():
    lines.append(f"| {e['name']} | {_budget_words(e)} | {len(e['seeds'])} | {e['selected_on']} "
                 f"| {_fmt(e['best']['test_accuracy'])} | {_fmt(e['best']['epoch'], 1)} "
                 f"| {_fmt(e['final']['test_accuracy'])} | {_fmt(e['min_test_loss'])} "
                 f"| {_fmt(e['min_test_loss_epoch'], 1)} | {_fmt(e['wall_s'], 1)} |")
  arms = summary.get("arms") or {}
  if arms:
    lines += ["", "Transfer arms (overrides of `config.transfer`):", ""]
    lines += [f"- `{name}`: {json.dumps(over) if over else 'none'}" for name, over in arms.items()]
  if "pretrain" in summary:
    p = summary["pretrain"]
    acc = p["final_test_accuracy"]
    lines += ["", (f"Pretraining on {p['dataset']}: final test accuracy "
              f"{acc if acc is None else format(acc, '.4f')}, {p['wall_s'] or 0:.1f} s "
              "wall-clock (counted in `time.png`).")]
  return "\n".join(lines) + "\n"


def require_runs(workdir: str) -> dict:
  """The summary of `workdir`, or a `UserError` when it holds nothing to report."""
  summary = summarize(workdir)
  if not summary["experiments"]:
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


def write_report(workdir: str, summary: dict | None = None) -> str:
  """Writes DIR/report/ from the metrics on disk (summarised by `require_runs` unless given)
  and returns that folder."""
  summary = summary or require_runs(workdir)
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  summary["arms"] = _arms(workdir, summary)
  figures = ["loss.png", "accuracy.png", "time.png"]
  _plot_curves(summary, "test_loss", "test loss", os.path.join(out, "loss.png"))
  _plot_curves(summary, "test_accuracy", "test accuracy", os.path.join(out, "accuracy.png"))
  _plot_time(summary, os.path.join(out, "time.png"))
  if len({e["budget"] for e in summary["experiments"].values()}) > 1:
    _plot_labels(summary, os.path.join(out, "labels.png"))
    figures.append("labels.png")
  elif os.path.exists(os.path.join(out, "labels.png")):
    os.remove(os.path.join(out, "labels.png"))  # from an earlier report with several budgets
  summary["figures"] = figures
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(_markdown(summary))
  return out
