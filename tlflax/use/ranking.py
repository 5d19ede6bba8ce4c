"""DIR/rank/: what `--mode=rank` found, and how it compares with fine-tuning where the workdir
holds runs fine-tuned from the same candidates.

- ranking.json: the target, every candidate's scores (per stage and at the pooled features),
  seconds, suggested `transfer.freeze`, and the agreement with fine-tuning.
- ranking.md: the same as tables, candidates in LogME order.
- ranking.png: LogME and the linear probe's accuracy after each stage, one line per candidate.

A fine-tuned run belongs to a candidate when it trained on the same target data (dataset, splits,
label budget, image size) and started from it: a transfer run whose `init` names the candidate's
run folder or weights file (by sha256), or a scratch run for `random`. A candidate's fine-tuned
accuracy is the best final test accuracy among its experiments, each the mean over its seeds.
Each score is then compared with it over the candidates that have one: Kendall's tau and the
weighted tau the LogME paper reports (scipy.stats.kendalltau and weightedtau; weightedtau
weighs the top of the ranking more).
"""

import math

import numpy as np

from tlflax.io import figures, rundir, storage

SCORES = ("logme", "leep", "nce", "probe")
DATA_KEYS = ("dataset", "train_split", "test_split", "examples_per_class", "image_size")


def stage_number(name: str) -> int:
  """k of 'stagek': where the stage sits in the network."""
  return int(name[len("stage"):])


def stage_names(names) -> list[str]:
  """The stage names among `names` ('stage1', ..., not 'probs'), in network order."""
  return sorted((n for n in names if n.startswith("stage")), key=stage_number)


def _owner(config: dict, candidates) -> str | None:
  """The name of the candidate a run's config.json says it started from, if any."""
  if config.get("mode") == "scratch":
    return next((c.name for c in candidates if c.name == "random"), None)
  init = config.get("init") or {}
  for c in candidates:
    if c.name == "random":
      continue
    if c.info.get("sha256") and init.get("sha256") == c.info["sha256"]:
      return c.name
    run = c.info.get("run")
    if run and init.get("run") and storage.absolute(run) == storage.absolute(init["run"]):
      return c.name
  return None


def fine_tuned(workdir: str, candidates, config) -> dict:
  """{candidate: {'accuracy': best experiment's mean final test accuracy, 'experiments':
  {name: [accuracy per seed]}}} of the finished runs in `workdir` (`rundir.target_runs`, each
  seed of an experiment counted once, as the report counts it) fine-tuned on today's target
  data."""
  want = {k: config.target[k] for k in DATA_KEYS}
  usable, runs = {}, []  # run_dir -> (owner, accuracy) of the runs that count
  for run in rundir.target_runs(workdir):
    target = run.config.get("target") or {}
    owner = _owner(run.config, candidates)
    accuracy = ((run.summary or {}).get("final") or {}).get("test_accuracy")
    if (owner is not None and accuracy is not None and math.isfinite(accuracy)
        and {k: target.get(k) for k in DATA_KEYS} == want):
      usable[run.run_dir] = owner, float(accuracy)
      runs.append(run)
  found: dict = {}  # owner -> experiment -> [accuracy per seed]
  for run in rundir.one_per_seed(runs):
    owner, accuracy = usable[run.run_dir]
    found.setdefault(owner, {}).setdefault(run.name, []).append(accuracy)
  return {name: {"accuracy": max(float(np.mean(v)) for v in exps.values()), "experiments": exps}
          for name, exps in found.items()}


def correlations(results: list[dict], tuned: dict) -> dict:
  """{score: {'kendall_tau', 'weighted_tau', 'n'}} over the candidates with a fine-tuned accuracy
  and that score (None where fewer than two have both)."""
  # Lazily: scipy.stats costs 0.5 s of every tlflax start-up, and only a ranking needs it.
  from scipy import stats

  out = {}
  for key in SCORES:
    pairs = [(r[key], tuned[r["name"]]["accuracy"]) for r in results
             if r["name"] in tuned and r.get(key) is not None]
    if len(pairs) < 2:
      out[key] = None
      continue
    s, a = np.array(pairs).T
    out[key] = {"kendall_tau": float(stats.kendalltau(s, a).statistic),
                "weighted_tau": float(stats.weightedtau(s, a).statistic), "n": len(pairs)}
  return out


def _fmt(x, digits: int = 4) -> str:
  return "-" if x is None else f"{x:.{digits}f}"


def markdown(target: dict, results: list[dict], tuned: dict, corr: dict) -> str:
  order = sorted(results, key=lambda r: -r["logme"])
  lines = ["# Which source to start from", "",
           (f"Target: {target['dataset']} `{target['train_split']}`"
            + (f", {target['examples_per_class']} per class" if target["examples_per_class"]
               else "") + f", {target['examples']} images of {target['classes']} classes at "
            f"{target['image_size']} px; the linear probe is fit on "
            f"{target['examples'] - target['probe_held_out']} and scored on "
            f"{target['probe_held_out']}. Higher is better for every score; see docs/rank.md."), "",
           ("| rank | source | model | LogME | LEEP | NCE | probe acc | fine-tuned acc | "
           "suggested freeze | features s | scores s |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  for i, r in enumerate(order, 1):
    suggestion = (r.get("suggest") or {}).get("freeze", "-")
    lines.append(f"| {i} | `{r['name']}` | {r['model']} (width {r['width']}) | "
                 f"{_fmt(r['logme'])} | {_fmt(r['leep'])} | {_fmt(r['nce'])} | "
                 f"{_fmt(r['probe'], 3)} | {_fmt((tuned.get(r['name']) or {}).get('accuracy'), 3)}"
                 f" | `{suggestion}` | {r['features_s']:.1f} | {r['scores_s']:.1f} |")
  lines += ["", "## How deep each source stays useful", "",
            "LogME (and the probe's held-out accuracy) of the pooled output after each stage:", ""]
  stages = stage_names(order[0]["stages"])
  lines += ["| source | " + " | ".join(stages) + " |", "|---" * (len(stages) + 1) + "|"]
  for r in order:
    cells = [f"{_fmt(r['stages'][s]['logme'])} ({_fmt(r['stages'][s]['probe'], 3)})"
             for s in stages]
    lines.append(f"| `{r['name']}` | " + " | ".join(cells) + " |")
  lines.append("")
  for r in order:
    if r.get("suggest"):
      lines.append(f"- `{r['name']}`: `--config.transfer.freeze={r['suggest']['freeze']}`: "
                   f"{r['suggest']['why']}.")
  lines += ["", "## Checked against fine-tuning", ""]
  if not any(corr.values()):
    lines.append("No fine-tuned runs from two or more of these candidates on this target in the "
                 "workdir: run the transfers (or scratch, for `random`) into it and rank again.")
  else:
    lines += ["| score | Kendall tau | weighted tau | sources |", "|---|---|---|---|"]
    for key, c in corr.items():
      if c is not None:
        lines.append(f"| {key} | {c['kendall_tau']:+.3f} | {c['weighted_tau']:+.3f} | {c['n']} |")
    lines += ["", "Fine-tuned experiments behind each accuracy (final test accuracy per seed):", ""]
    for name, t in tuned.items():
      exps = "; ".join(f"{e}: {', '.join(f'{a:.3f}' for a in accs)}"
                       for e, accs in sorted(t["experiments"].items()))
      lines.append(f"- `{name}`: {exps}")
  return "\n".join(lines) + "\n"


def plot(results: list[dict], path: str) -> None:
  plt = figures.pyplot()
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
  for r in sorted(results, key=lambda r: -r["logme"]):
    stages = stage_names(r["stages"])
    x = [stage_number(s) for s in stages]
    for ax, key in zip(axes, ("logme", "probe"), strict=True):
      ax.plot(x, [r["stages"][s][key] for s in stages], marker="o", label=r["name"])
  for ax, label in zip(axes, ("LogME", "linear probe, held-out accuracy"), strict=True):
    ax.set_xlabel("after stage")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  figures.write_png(fig, path)


def write(out: str, target: dict, results: list[dict], tuned: dict) -> None:
  corr = correlations(results, tuned)
  storage.makedirs(out)
  rundir.write_json(storage.join(out, "ranking.json"),
                    {"target": target, "sources": results, "fine_tuned": tuned,
                     "correlation": corr})
  storage.write_text(storage.join(out, "ranking.md"), markdown(target, results, tuned, corr))
  plot(results, storage.join(out, "ranking.png"))
