"""report.md, written from a study's summary: the claims with their verdicts, the table of
experiments (a single seed's value alone, "(n of N seeds)" where a seed's value was not finite),
the arms, the pretraining, the non-finite values and the unfinished runs."""

import json


def _fmt(stat: dict | None, digits: int = 4, seeds: int = 0) -> str:
  """Mean ± std, or the value alone for one; '(n of N seeds)' where seeds' values were left out
  (not finite)."""
  if stat is None:
    return "n/a"
  text = f"{stat['mean']:.{digits}f}"
  if stat["std"] is not None:
    text += f" ± {stat['std']:.{digits}f}"
  if seeds and stat["n"] < seeds:
    text += f" ({stat['n']} of {seeds} seeds)"
  return text


def _budget_words(e: dict) -> str:
  if e["budget"]:
    return str(e["budget"])
  return f"all ({e['examples_per_class']:.0f})" if e["examples_per_class"] else "all"


def _claim_lines(summary: dict) -> list[str]:
  on = summary["claims_on"]
  pair = (f"Judged on the mean curves over seeds of `{on['scratch']}` and `{on['transfer']}` "
          "(the largest label budget), from the metrics of finished runs on disk. A verdict "
          "holds or fails only where the curves it compares ran long enough and were evaluated "
          "at every epoch it reads." if all(on.values()) else
          "They need finished scratch and transfer runs at one label budget.")
  lines = ["## The study's claims", "", pair, ""]
  for i, c in enumerate(summary["claims"], 1):
    where = f" (epoch {c['epoch']})" if c["epoch"] is not None else ""
    basis = f" Rests on {c['rests_on']}." if c.get("rests_on") else ""
    lines.append(f"{i}. **{c['verdict']}**{where}: {c['claim']} {c['evidence'][0].upper()}"
                 f"{c['evidence'][1:]}.{basis}")
  return lines


def _unfinished_lines(summary: dict) -> list[str]:
  """Every unfinished run folder, how far it got, and whether the figures count it."""
  runs = summary["unfinished"]
  if not runs:
    return []
  counted = summary["include_unfinished"]
  lines = ["", "## Unfinished runs", "",
           ("Counted in the figures above (include_unfinished), cut to the epochs their "
            "experiment's seeds share:" if counted else
            "Not counted in any figure above (rerun the command that started them to finish "
            "them; `--config.report.include_unfinished=true` counts them):"), ""]
  for r in runs:
    planned = f" of {r['epochs']}" if r["epochs"] else ""
    lines.append(f"- `{r['run']}` ({r['experiment']}, seed {r['seed']}): evaluated up to epoch "
                 f"{r['epoch']}{planned}; {r['state']}")
  missing = sorted({r["experiment"] for r in runs} - set(summary["experiments"]))
  if missing:
    lines += ["", "Not finished, so not drawn: " + ", ".join(f"`{m}`" for m in missing) + "."]
  return lines


def markdown(summary: dict) -> str:
  """report.md of a study's summary (`report.summarize`, with its arms and figures)."""
  exps = summary["experiments"]
  lines = ["# Transfer study", ""] + _claim_lines(summary)
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
  lines += ["", "Mean ± sample standard deviation (ddof=1) over seeds; a single seed shows its "
            "value alone. Curves: `loss.png` (log scale), `accuracy.png` (largest budget; mean "
            "over seeds, band from the lowest to the highest seed; scratch red, the study's "
            "transfer arm blue, other arms in their own colours), `time.png` (test accuracy "
            "against wall-clock seconds, transfer counting its pretraining)"
            + (", `labels.png`." if "labels.png" in summary.get("figures", ()) else "."), ""]
  cut = [f"- `{e['name']}`: its curves and figures cover epochs {e['epochs'][0]}-"
         f"{e['cut']['to_epoch']}, the epochs all its seeds evaluated; its longest seed "
         f"reached epoch {e['cut']['longest_epoch']}." for e in exps.values() if e["cut"]]
  lines += cut + ([""] if cut else [])
  lines += [("| experiment | labels/class | seeds | selected on | best test acc | best epoch "
             "| final test acc | min test loss | epoch of min test loss | wall-clock s |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
  for e in exps.values():
    n = len(e["seeds"])
    lines.append(f"| {e['name']} | {_budget_words(e)} | {n} | {e['selected_on']} "
                 f"| {_fmt(e['best']['test_accuracy'], 4, n)} | {_fmt(e['best']['epoch'], 1, n)} "
                 f"| {_fmt(e['final']['test_accuracy'], 4, n)} | {_fmt(e['min_test_loss'], 4, n)} "
                 f"| {_fmt(e['min_test_loss_epoch'], 1, n)} | {_fmt(e['wall_s'], 1, n)} |")
  arms = summary.get("arms") or {}
  if arms:
    lines += ["", ("Transfer arms (overrides of `config.transfer`, and of `config.target` under "
              "`target`):"), ""]
    lines += [f"- `{name}`: {json.dumps(over) if over else 'none'}" for name, over in arms.items()]
  if "pretrain" in summary:
    p = summary["pretrain"]
    acc = p["final_test_accuracy"]
    lines += ["", (f"Pretraining on {p['dataset']}: final test accuracy "
              f"{acc if acc is None else format(acc, '.4f')}, {p['wall_s'] or 0:.1f} s "
              "wall-clock (counted in `time.png`).")]
  lines += _nonfinite_lines(summary) + _unfinished_lines(summary)
  return "\n".join(lines) + "\n"


def _nonfinite_lines(summary: dict) -> list[str]:
  """Every non-finite value in the runs' metrics, which no figure or verdict above uses."""
  points = summary["nonfinite"]
  if not points:
    return []
  lines = ["", "## Non-finite values", "",
           ("Left out of every mean, extreme and verdict above (an epoch where every seed is "
            "non-finite counts as the worst value, never as a best):"), ""]
  return lines + [f"- `{p['run']}` epoch {p['epoch']}: `{p['key']}` = {p['value']}"
                  for p in points]
