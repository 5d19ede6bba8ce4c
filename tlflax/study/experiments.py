"""The study (`--mode=compare`): scratch and every transfer arm, at every label budget, for every
seed, each arm from one source (DIR/pretrain, shared, or its own `init_from`); then the report.

Every (experiment, seed) is a run folder of its own, `DIR/<experiment>/seed_<N>`, named
  scratch[_<B>shot]            from random weights
  transfer_<arm>[_<B>shot]     from the arm's source, with `config.arms[arm]` applied to
                               `config.transfer`
where B is the label budget (examples per class; no suffix: all of them). A rerun reuses every
finished folder and resumes an interrupted one, so adding an arm, a budget or a seed to a config
trains only what is new.
"""

import dataclasses
import os

from absl import logging

from tlflax import config as config_lib
from tlflax import parallel
from tlflax.io import rundir
from tlflax.study import report
from tlflax.train import phase as phase_lib
from tlflax.train import source as source_lib
from tlflax.train import tracking


@dataclasses.dataclass(frozen=True)
class Experiment:
  """One line of the study: scratch or a transfer arm, at one label budget."""

  mode: str  # 'scratch' | 'transfer'
  arm: str | None  # the transfer arm (None for scratch)
  budget: int  # examples per class of the target's training split; 0: all

  @property
  def name(self) -> str:
    return rundir.experiment_name(self.mode, self.arm, self.budget)

  def config(self, config, seed: int):
    """The config of this experiment's run for `seed`."""
    out = config_lib.with_budget(config, self.budget)
    if self.mode == "transfer":
      out = config_lib.with_arm(out, self.arm)
    out.seed = int(seed)
    return out

  def run_dir(self, workdir: str, seed: int) -> str:
    return os.path.join(workdir, self.name, f"seed_{seed}")

  def record(self) -> dict:
    """What the run's config.json says of its place in the study (read by the report)."""
    return {"experiment": self.name, "arm": self.arm, "budget": self.budget}


def experiments(config) -> list[Experiment]:
  """Scratch and every arm, for every label budget, in config order."""
  return [Experiment(mode, arm, budget)
          for budget in config_lib.budgets(config)
          for mode, arm in [("scratch", None)] + [("transfer", a)
                                                  for a in config_lib.arm_names(config)]]


def run_compare(config, workdir: str, placement=None) -> str:
  """The whole study on `workdir`, then its report; returns the report folder. Each arm's
  transfer source (its `init_from`, else DIR/pretrain) is resolved once and made ready first
  (the pretraining, before any target run, and only when an arm starts from it)."""
  todo = experiments(config)
  logging.info("study: %d experiment(s) x %d seed(s): %s", len(todo), len(config.seeds),
               ", ".join(e.name for e in todo))
  sources = {}  # init_from -> Source: arms that name another source start from it, not DIR/pretrain
  for arm in config_lib.arm_names(config):
    arm_config = config_lib.with_arm(config, arm)
    init_from = arm_config.transfer.init_from
    if init_from not in sources:
      sources[init_from] = source_lib.resolve(arm_config, workdir)
      phase_lib.prepare_source(sources[init_from], workdir, placement)
  for seed in config.seeds:
    for exp in todo:
      run_config = exp.config(config, seed)
      source = sources[run_config.transfer.init_from] if exp.mode == "transfer" else None
      phase_lib.run_phase(exp.mode, run_config, workdir, exp.run_dir(workdir, seed), source,
                          placement, exp.record())
  return write_report(workdir, config.report.include_unfinished, config.track)


def write_report(workdir: str, include_unfinished: bool = False, track=None) -> str:
  """The report, drawn by process 0 only (every process checks there is something to report),
  and sent to the tracker when `track` (config.track) says so."""
  out = os.path.join(workdir, "report")
  summary = report.require_runs(workdir, include_unfinished)
  if parallel.is_main_process():
    out = report.write_report(workdir, summary)
    logging.info("report written to %s", out)
    tracking.report(track, workdir, out, summary)
  parallel.sync("report")
  return out
