"""The scratch-vs-transfer report: curves over seeds, and the study's numbers, from metrics files.

Reads `DIR/{scratch,transfer}/` (a single run) and `DIR/{scratch,transfer}/seed_*/` (one per
seed, as `--mode=compare` writes them) and writes `DIR/report/`: `loss.png`, `accuracy.png`,
`summary.json` and `report.md`. Nothing is trained here, so it can be redrawn at any time.
"""

import glob
import json
import os

import numpy as np

from tlflax.errors import UserError
from tlflax.monitor import read_metrics

EXPERIMENTS = {"scratch": ("Experiment A: from scratch", "tab:red"),
               "transfer": ("Experiment B: transfer", "tab:blue")}


def _seed(run_dir: str):
  path = os.path.join(run_dir, "config.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f).get("seed")


def find_runs(workdir: str, experiment: str) -> list[str]:
  """Run folders of one experiment that hold metrics: DIR/exp/seed_* (as compare writes them)
  and DIR/exp itself (a single-mode run), unless a seed_* folder already holds its seed: each
  seed counts once."""
  base = os.path.join(workdir, experiment)
  seeded = [d for d in sorted(glob.glob(os.path.join(base, "seed_*"))) if read_metrics(d)]
  seeds = {_seed(d) for d in seeded}
  single = [base] if read_metrics(base) and _seed(base) not in seeds else []
  return single + seeded


def _load_summary(run_dir: str) -> dict:
  path = os.path.join(run_dir, "summary.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _curves(runs: list[str], key: str) -> tuple[np.ndarray, np.ndarray]:
  """(epochs, values[seed, epoch]) over the epochs every run has reached."""
  records = [{r["epoch"]: r[key] for r in read_metrics(d)} for d in runs]
  epochs = sorted(set.intersection(*(set(r) for r in records)))
  return np.array(epochs), np.array([[r[e] for e in epochs] for r in records])


def _mean_std(values) -> dict:
  values = np.asarray(values, dtype=float)
  return {"mean": float(values.mean()), "std": float(values.std()), "n": int(values.size)}


def summarize(workdir: str) -> dict:
  """The numbers of the study for every experiment present in `workdir`."""
  out: dict = {"workdir": os.path.abspath(workdir), "experiments": {}}
  for exp in EXPERIMENTS:
    runs = find_runs(workdir, exp)
    if not runs:
      continue
    epochs, acc = _curves(runs, "test_accuracy")
    _, loss = _curves(runs, "test_loss")
    if not len(epochs):
      continue
    out["experiments"][exp] = {
        "runs": [os.path.relpath(r, workdir) for r in runs],
        "epochs": epochs.tolist(),
        "best_test_accuracy": _mean_std(acc.max(1)),
        "final_test_accuracy": _mean_std(acc[:, -1]),
        "min_test_loss": _mean_std(loss.min(1)),
        "min_test_loss_epoch": _mean_std(epochs[loss.argmin(1)]),
        "wall_s": _mean_std([_load_summary(r).get("wall_s", np.nan) for r in runs]),
        "mean_test_accuracy": acc.mean(0).tolist(),
        "mean_test_loss": loss.mean(0).tolist(),
    }
  exps = out["experiments"]
  if "scratch" in exps and "transfer" in exps:
    target = exps["scratch"]["best_test_accuracy"]["mean"]
    reached = [e for e, a in zip(exps["transfer"]["epochs"], exps["transfer"]["mean_test_accuracy"])
               if a >= target]
    out["transfer_reaches_scratch_best_at_epoch"] = reached[0] if reached else None
  pretrain = _load_summary(os.path.join(workdir, "pretrain"))
  if pretrain:
    out["pretrain"] = {"dataset": pretrain.get("dataset"), "wall_s": pretrain.get("wall_s"),
                       "final_test_accuracy": (pretrain.get("final") or {}).get("test_accuracy")}
  return out


def _plot(workdir: str, key: str, ylabel: str, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker
  fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
  for exp, (name, colour) in EXPERIMENTS.items():
    runs = find_runs(workdir, exp)
    if not runs:
      continue
    epochs, values = _curves(runs, key)
    mean, std = values.mean(0), values.std(0)
    ax.plot(epochs, mean, color=colour, label=f"{name} ({len(runs)} seed{'s' * (len(runs) > 1)})")
    if len(runs) > 1:
      ax.fill_between(epochs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.set_xlabel("epoch")
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def _fmt(stat: dict, digits: int = 4) -> str:
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _markdown(summary: dict) -> str:
  lines = ["# Scratch vs transfer", "",
           ("Mean ± std over seeds. Test loss and accuracy per epoch: `loss.png`, `accuracy.png` "
            "(transfer blue, scratch red; band: ± one std)."), "",
           ("| experiment | seeds | best test acc | final test acc | min test loss "
            "| epoch of min test loss | wall-clock s |"), "|---|---|---|---|---|---|---|"]
  for exp, s in summary["experiments"].items():
    lines.append(f"| {EXPERIMENTS[exp][0]} | {s['best_test_accuracy']['n']} "
                 f"| {_fmt(s['best_test_accuracy'])} | {_fmt(s['final_test_accuracy'])} "
                 f"| {_fmt(s['min_test_loss'])} | {_fmt(s['min_test_loss_epoch'], 1)} "
                 f"| {_fmt(s['wall_s'], 1)} |")
  lines.append("")
  if "transfer_reaches_scratch_best_at_epoch" in summary:
    epoch = summary["transfer_reaches_scratch_best_at_epoch"]
    lines.append("Transfer reaches scratch's best mean test accuracy "
                 + (f"at epoch {epoch}." if epoch else "at no epoch of this run."))
  if "pretrain" in summary:
    p = summary["pretrain"]
    lines.append(f"Pretraining on {p['dataset']}: final test accuracy "
                 f"{p['final_test_accuracy']:.4f}, {p['wall_s']:.1f} s wall-clock.")
  return "\n".join(lines) + "\n"


def require_runs(workdir: str) -> dict:
  """The summary of `workdir`, or a `UserError` when it holds nothing to report."""
  summary = summarize(workdir)
  if not summary["experiments"]:
    raise UserError(f"{workdir} holds no scratch or transfer runs with metrics: run "
                    "--mode=compare (or --mode=scratch / --mode=transfer) there first")
  return summary


def write_report(workdir: str, summary: dict | None = None) -> str:
  """Writes DIR/report/ from the metrics on disk (summarised by `require_runs` unless given)
  and returns that folder."""
  summary = summary or require_runs(workdir)
  out = os.path.join(workdir, "report")
  os.makedirs(out, exist_ok=True)
  _plot(workdir, "test_loss", "test loss", os.path.join(out, "loss.png"))
  _plot(workdir, "test_accuracy", "test accuracy", os.path.join(out, "accuracy.png"))
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(_markdown(summary))
  return out
