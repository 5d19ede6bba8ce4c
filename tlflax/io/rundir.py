"""Run folders: which config a folder belongs to, when it is reused, resumed or refused.

A run folder (`DIR/<mode>`, or `DIR/<experiment>/seed_N` in a study) holds `config.json`
(written when the run starts), `data_stats.json`, `checkpoints/`, `metrics.jsonl`, TensorBoard
events and, once finished, `summary.json`.
Rules:
- A folder whose recorded config disagrees with today's on what decides its result (`RELEVANT`)
  is refused, unless nothing was trained in it yet.
- A transfer run's result also depends on the run it starts from: its `config.json` records that
  source (`init`: the source run, a hash of the source's config, the checkpoint and step), and a
  source whose config changed is a changed config.
- A folder that a failed start created and left without anything trained in it is removed.
"""

import dataclasses
import hashlib
import json
import os

from tlflax import parallel
from tlflax.errors import UserError
from tlflax.io import checkpoint, storage

# Which config blocks decide a run's result: a resumed or reused run must agree on them.
RELEVANT = {"pretrain": ("seed", "model", "source"), "scratch": ("seed", "model", "target"),
            "transfer": ("seed", "model", "target", "transfer", "init.config_sha256",
                         "init.sha256")}
# The statistics a run normalises its inputs with, written before it trains.
STATS_FILE = "data_stats.json"
# Entries of a run folder that say nothing was trained in it.
_UNTRAINED = {"config.json", "config.json.tmp", STATS_FILE, STATS_FILE + ".tmp"}


def flat(d: dict, prefix: str = "") -> dict:
  """{'a.b.c': leaf} for a nested dict; sequences become lists so JSON round trips compare equal."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = list(v) if isinstance(v, (list, tuple)) else v
  return out


# Keys that decide a result and were added later: what a record written before them used.
_BEFORE_THE_KEY = {"model.padding": "same", "source.accumulate_steps": 1,
                   "target.accumulate_steps": 1}


def _relevant(record: dict, mode: str) -> dict:
  """The entries of a config record (config.json's content) that decide a `mode` run's result."""
  everything = flat(json.loads(json.dumps(record, default=str)))
  if "model.name" in everything:
    everything = {**_BEFORE_THE_KEY, **everything}
  keys = ("mode",) + RELEVANT[mode]
  return {k: v for k, v in everything.items() if any(k == p or k.startswith(p + ".") for p in keys)}


def hparams(mode: str, config) -> dict:
  """The flat config entries that decide a `mode` run's result (TensorBoard's HParams view)."""
  return _relevant(record_of(mode, config), mode)


def config_hash(record: dict, mode: str) -> str:
  """sha256 of what decides a `mode` run's result, from its config record."""
  blob = json.dumps(_relevant(record, mode), sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()


def record_of(mode: str, config, init: dict | None = None, study: dict | None = None) -> dict:
  """What config.json holds for a `mode` run of `config` (`study`: where a study placed it, which
  does not decide its result)."""
  out = {"mode": mode, **config.to_dict()}
  if init is not None:
    out["init"] = init
  if study is not None:
    out["study"] = study
  return out


def write_json(path: str, obj) -> None:
  """Writes `obj` as JSON, atomically: a reader never sees half a file (`storage.write_text`)."""
  storage.write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str))


def read_json(path: str) -> dict | None:
  text = storage.read_text(path)
  return None if text is None else json.loads(text)


def finished(run_dir: str) -> dict | None:
  """The summary of a run that completed (summary.json is written last), else None."""
  return read_json(storage.join(run_dir, "summary.json"))


def _differences(run_dir: str, mode: str, record: dict) -> list[str] | None:
  """What differs between `record` and the run folder's config.json on what decides a `mode`
  run's result (None: there is no config.json)."""
  saved = read_json(storage.join(run_dir, "config.json"))
  if saved is None:
    return None
  old, new = _relevant(saved, mode), _relevant(record, mode)
  return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k)]


def refuse_if_changed(run_dir: str, mode: str, record: dict) -> None:
  """A `UserError` when `run_dir` holds a trained run whose config disagrees with `record`."""
  _refuse(run_dir, _differences(run_dir, mode, record))


def _refuse(run_dir: str, diff: list[str] | None) -> None:
  if diff and not untrained(run_dir):
    hint = (" (the run it starts from has another config)"
            if any(d.startswith("init.") for d in diff) else "")
    if any(d.startswith("model.padding: 'same'") for d in diff):
      hint += (" (it was trained with model.padding='same': --config.model.padding=same resumes "
               "or reuses it)")
    raise UserError(f"{run_dir} holds a run with another config ({'; '.join(diff[:4])}){hint}: "
                    "use another --workdir, or move that folder away to start over")


def open_run(run_dir: str, mode: str, config, init: dict | None = None,
             study: dict | None = None) -> list[str]:
  """Creates the run folder and its config.json, or checks that an existing one agrees.

  Returns the folders this call created (for `discard_untrained`). Every process checks (so all
  refuse together), and all have checked before process 0 alone writes: a process still checking
  would otherwise read no config.json, then list the one just written, and refuse the folder as
  not a tlflax run (seen on s3 with two processes). All meet again afterwards.
  """
  current = record_of(mode, config, init, study)
  diff = _differences(run_dir, mode, current)
  _refuse(run_dir, diff)
  if diff is None and any(not e.startswith("seed_") for e in storage.listdir(run_dir)):
    raise UserError(f"{run_dir} holds files but no config.json, so it is not a tlflax run: "
                    "choose another --workdir, or move that folder away")
  parallel.sync(f"checked {run_dir}")
  # Same config: keep the file (it may record the source's checkpoint). Another config but
  # nothing trained under it: replace it.
  created = []
  if diff != [] and parallel.is_main_process():
    created = _missing_ancestors(run_dir)
    try:
      storage.makedirs(run_dir)
      write_json(storage.join(run_dir, "config.json"), current)
    except OSError as e:
      raise UserError(f"cannot write run folder {run_dir} ({e.strerror or e}): choose a "
                      "writable --workdir") from e
  parallel.sync(f"opened {run_dir}")
  return created


def record_init(run_dir: str, init: dict) -> None:
  """Completes the `init` entry of a transfer run's config.json (checkpoint and step used)."""
  if parallel.is_main_process():
    path = storage.join(run_dir, "config.json")
    record = read_json(path)
    record["init"] = init
    write_json(path, record)
  parallel.sync(f"recorded the source of {run_dir}")


def _missing_ancestors(run_dir: str) -> list[str]:
  """`run_dir` and those of its parents that do not exist yet, deepest first (on a store,
  `run_dir` alone: its folders are prefixes, gone with their last object)."""
  if storage.is_remote(run_dir):
    return [] if storage.exists(run_dir) else [run_dir]
  out, d = [], os.path.abspath(run_dir)
  while not os.path.exists(d):
    out.append(d)
    d = os.path.dirname(d)
  return out


def untrained(run_dir: str) -> bool:
  """True when a run folder holds nothing but its config (and empty or only-temporary
  checkpoint folders): no step of training was ever recorded in it."""
  for entry in storage.listdir(run_dir):
    full = storage.join(run_dir, entry)
    if entry.startswith("seed_") or entry in _UNTRAINED:
      continue
    if entry == "checkpoints" and storage.isdir(full) and not checkpoint.steps_in(full):
      continue
    return False
  return True


def discard_untrained(created: list[str]) -> None:
  """After a failed start: removes the folders `open_run` created, if nothing was trained there."""
  if not created or not parallel.is_main_process():
    return
  run_dir = created[0]
  if not storage.isdir(run_dir) or not untrained(run_dir) or any(
      e.startswith("seed_") for e in storage.listdir(run_dir)):
    return
  storage.rmtree(run_dir)
  for parent in created[1:]:
    if not storage.rmdir_if_empty(parent):
      break


def experiment_name(mode: str, arm: str | None, budget: int) -> str:
  """An experiment's name, which is its folder in a workdir: scratch, transfer (a single
  --mode=transfer run) or transfer_<arm> (a study's arm), with _<B>shot at a label budget of B
  examples per class."""
  base = "scratch" if mode == "scratch" else f"transfer_{arm}" if arm else "transfer"
  return base + (f"_{budget}shot" if budget else "")


@dataclasses.dataclass(frozen=True)
class TargetRun:
  """A scratch or transfer run folder of a workdir, finished (summary.json) or not."""

  name: str  # its experiment: the study's name for it, else scratch / transfer (_<B>shot)
  run_dir: str
  seeded: bool  # a study's seed_N folder (wins over a single-mode folder of the same seed)
  config: dict  # its config.json
  budget: int  # target.examples_per_class (0: all)
  summary: dict | None  # its summary.json (None: not finished)

  @property
  def finished(self) -> bool:
    return self.summary is not None


def target_runs(workdir: str) -> list[TargetRun]:
  """Every scratch or transfer run folder of `workdir` that has a config.json:
  `DIR/<experiment>/seed_N/` (as `--mode=compare` writes them) and `DIR/scratch/`,
  `DIR/transfer/` (single-mode runs). The report and `--mode=rank` read the runs through it."""
  found = []
  for base in storage.glob(workdir, "*"):
    for run_dir in [base] + storage.glob(base, "seed_*"):
      config = read_json(storage.join(run_dir, "config.json")) or {}
      if config.get("mode") not in ("scratch", "transfer"):
        continue
      budget = int((config.get("target") or {}).get("examples_per_class") or 0)
      name = (config.get("study") or {}).get("experiment") or experiment_name(
          config["mode"], None, budget)  # a single-mode run: DIR/scratch or DIR/transfer
      found.append(TargetRun(name, run_dir, run_dir != base, config, budget, finished(run_dir)))
  return found


def one_per_seed(runs: list[TargetRun]) -> list[TargetRun]:
  """`runs` with each seed of an experiment once: a study's seed_N folder wins over a
  single-mode run folder of the same seed (the report and `--mode=rank` count seeds so)."""
  seen, out = set(), []
  for run in sorted(runs, key=lambda r: not r.seeded):  # seeded first
    key = (run.name, run.config.get("seed"))
    if key not in seen:
      seen.add(key)
      out.append(run)
  return out
