"""The report's figures, drawn from its summary (`report.summarize`):
  loss.png, accuracy.png   test curves at the largest label budget: the mean over seeds with a
                           band from the lowest to the highest seed; the loss on a log axis
  time.png                 test accuracy against wall-clock seconds, transfer shifted by its
                           pretraining
  labels.png               test accuracy at the best epoch against labelled examples per class
                           (with two budgets or more)
Scratch is red, the study's transfer arm blue, every other arm a colour of its own.
"""

import math
import os

import numpy as np

from tlflax.io import figures, storage

_SCRATCH_COLOUR, _STUDY_COLOUR = "tab:red", "tab:blue"
_PALETTE = ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
            "tab:cyan", "tab:gray")


def draw(summary: dict, out: str) -> list[str]:
  """Draws every figure of `summary` into the folder `out`; returns their file names."""
  figures = ["loss.png", "accuracy.png", "time.png"]
  _plot_curves(summary, "test_loss", "test loss", os.path.join(out, "loss.png"), log=True)
  _plot_curves(summary, "test_accuracy", "test accuracy", os.path.join(out, "accuracy.png"))
  _plot_time(summary, os.path.join(out, "time.png"))
  if len({e["budget"] for e in summary["experiments"].values()}) > 1:
    _plot_labels(summary, os.path.join(out, "labels.png"))
    figures.append("labels.png")
  else:
    storage.remove(os.path.join(out, "labels.png"))  # from an earlier report with several budgets
  return figures


def budget_rank(budget: int) -> float:
  return -math.inf if budget == 0 else -budget  # all labels first, then larger budgets first


def main_budget(experiments: dict) -> list[dict]:
  """The experiments at the largest label budget (all labels, if any ran on all)."""
  budget = min((e["budget"] for e in experiments.values()), key=budget_rank)
  return [e for e in experiments.values() if e["budget"] == budget]


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
  return figures.pyplot().subplots(figsize=(6.4, 4.2), dpi=120)


def _save(fig, ax, xlabel: str, ylabel: str, path: str) -> None:
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.grid(alpha=0.3)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize="small")
  fig.tight_layout()
  figures.write_png(fig, path)


def _band(ax, x, curve: dict, colour: str) -> None:
  """The min-max range over seeds: inside what the seeds reached, never an impossible value."""
  if curve.get("std") is not None:  # two seeds or more
    ax.fill_between(x, _values(curve["min"]), _values(curve["max"]), color=colour, alpha=0.2,
                    linewidth=0)


def _values(points: list) -> np.ndarray:
  """A curve's points as floats, an epoch without a finite value (None) as a gap."""
  return np.array([np.nan if v is None else v for v in points], dtype=float)


def _plot_curves(summary: dict, key: str, ylabel: str, path: str, log: bool = False) -> None:
  """Mean over seeds with the min-max band, per epoch, at the largest budget; `log`: a log y
  axis, so a few early spikes (BatchNorm statistics of a barely trained net) do not flatten the
  rest."""
  fig, ax = _figure()
  colours = _colours(summary["experiments"])
  for e in main_budget(summary["experiments"]):
    curve = e["curves"][key]
    ax.plot(e["epochs"], _values(curve["mean"]), color=colours[e["name"]],
            label=_label(e["name"], e["seeds"]))
    _band(ax, e["epochs"], curve, colours[e["name"]])
  if log:
    ax.set_yscale("log")
  ax.xaxis.set_major_locator(figures.pyplot().MaxNLocator(integer=True))
  ax.set_title("mean over seeds, band: min-max over seeds", fontsize="medium")
  _save(fig, ax, "epoch", ylabel + (" (log scale)" if log else ""), path)


def _plot_time(summary: dict, path: str) -> None:
  """Test accuracy against wall-clock seconds; transfer curves start after the pretraining."""
  fig, ax = _figure()
  colours = _colours(summary["experiments"])
  shift = (summary.get("pretrain") or {}).get("wall_s") or 0.0
  for e in main_budget(summary["experiments"]):
    if "wall_s" not in e["curves"]:
      continue
    offset = shift if e["mode"] == "transfer" else 0.0
    label = _label(e["name"], e["seeds"]) + (f", + {offset:.0f} s pretraining" if offset else "")
    x = _values(e["curves"]["wall_s"]["mean"]) + offset
    ax.plot(x, _values(e["curves"]["test_accuracy"]["mean"]), color=colours[e["name"]], label=label,
            marker=".")
    _band(ax, x, e["curves"]["test_accuracy"], colours[e["name"]])
  ax.set_title("mean over seeds, band: min-max over seeds", fontsize="medium")
  _save(fig, ax, "wall-clock seconds (transfer: after its pretraining)",
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
  fig, ax = _figure()
  colours = _colours(summary["experiments"])
  ticks = set()
  for name, line in _families(summary["experiments"]).items():
    line = sorted(line, key=lambda e: e["examples_per_class"])
    x = np.array([e["examples_per_class"] for e in line])
    stats = [e["best"]["test_accuracy"] for e in line]
    colour = colours[line[0]["name"]]
    ax.plot(x, [s["mean"] for s in stats], color=colour, marker="o",
            label=_label(name, line[0]["seeds"]))
    if any(s["std"] is not None for s in stats):
      ax.fill_between(x, [s["min"] for s in stats], [s["max"] for s in stats], color=colour,
                      alpha=0.2, linewidth=0)
    ticks.update(x.tolist())
  ax.set_xscale("log")
  ax.set_xticks(sorted(ticks), [f"{t:g}" for t in sorted(ticks)])
  ax.minorticks_off()
  ax.set_title(f"at each seed's best epoch, {_selection_words(summary)}; band: min-max",
               fontsize="medium")
  _save(fig, ax, "labelled training examples per class (log scale)", "test accuracy", path)


def _selection_words(summary: dict) -> str:
  kinds = {e["selected_on"] for e in summary["experiments"].values()}
  if kinds == {"val"}:
    return "chosen on validation"
  return "chosen on test" if kinds == {"test"} else "chosen on validation or test"


