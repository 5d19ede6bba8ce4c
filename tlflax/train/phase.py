"""One run in its folder: reused when finished, resumed when interrupted, else trained.

`run_phase` is what every mode comes down to (the study runs it once per experiment and seed).
A transfer run starts from its source run (`DIR/pretrain` unless `transfer.init_from` names
another), trained first if needed, and by default sees its inputs normalised with the source's
statistics (`transfer.normalize='source'`), as the transferred network was trained to see them.
"""

import dataclasses
import os
import time

from absl import logging

from tlflax import parallel
from tlflax.data import task as task_lib
from tlflax.io import checkpoint, rundir
from tlflax.train import run as run_lib
from tlflax.train import source as source_lib
from tlflax.train import spec as spec_lib


def _load_task(phase, config, where: str):
  """The phase's dataset (`where`: 'source' or 'target'). Process 0 loads first, preparing it
  with tfds if needed, so several processes never download into one data_dir at once; the others
  then read what it prepared."""
  def load():
    return task_lib.load_task(phase, config.data_dir, config.seed, config.get("data"), where)
  task = load() if parallel.is_main_process() else None
  parallel.sync(f"loaded {phase.dataset}")
  return task if task is not None else load()


def prepare_source(source, workdir: str, placement=None) -> None:
  """Makes a transfer run's source ready: `DIR/pretrain` is trained with `source.pretrain` when no
  finished pretraining exists there, and a finished one of another config is refused. Nothing to
  do for a source named by `init_from`."""
  if source.pretrain is None:
    return
  if rundir.finished(source.run) is not None:  # reused only if it is today's pretraining
    rundir.refuse_if_changed(source.run, "pretrain", rundir.record_of("pretrain", source.pretrain))
    return
  logging.info("no finished pretraining in %s: pretraining on %s first", source.run,
               source.pretrain.source.dataset)
  run_phase("pretrain", source.pretrain, workdir, source.run, placement=placement)


def run_phase(mode: str, config, workdir: str, run_dir: str | None = None, source=None,
              placement=None, study: dict | None = None) -> dict:
  """Runs (or resumes, or reuses) one training run and returns its summary.

  `source` (transfer only): the run's `source.Source`, which a caller running many transfer
  runs (the study) resolves once; by default it is resolved here, before the run folder opens.
  `study`: where the run sits in a study (experiment, arm, budget), recorded in its config.json
  for the report. A start that fails before anything is trained leaves no folder.
  """
  placement = placement or parallel.Placement.create(config.parallel)
  run_dir = run_dir or os.path.join(workdir, mode)
  if mode == "transfer":
    source = source or source_lib.resolve(config, workdir)
    if source.pretrain is not None:  # a stale pretraining: refuse before anything opens
      rundir.refuse_if_changed(source.run, "pretrain",
                               rundir.record_of("pretrain", source.pretrain))
  created = rundir.open_run(run_dir, mode, config, source.record() if source else None, study)
  try:
    return _train_in(run_dir, mode, config, workdir, source, placement)
  except BaseException:
    rundir.discard_untrained(created)
    raise


def _from_source(run_dir, config, workdir, source, task, placement) -> tuple:
  """(variables, init, seconds spent pretraining) of a transfer run. One that already trained
  resumes from its own checkpoints (variables None), its `init` as its config.json recorded it.
  Otherwise its source is made ready (`prepare_source`) and merged into a fresh init; `init`
  gains the checkpoint and step it came from."""
  if checkpoint.steps_in(os.path.join(run_dir, "checkpoints")):
    recorded = (rundir.read_json(os.path.join(run_dir, "config.json")) or {}).get("init")
    return None, recorded or source.record(), 0.0
  t0 = time.perf_counter()
  prepare_source(source, workdir, placement)
  pretrain_s = time.perf_counter() - t0
  variables, init = source_lib.variables(config, source, task, placement)
  rundir.record_init(run_dir, init)
  return variables, init, pretrain_s


def _train_in(run_dir, mode, config, workdir, source, placement) -> dict:
  """The body of `run_phase`, in a run folder that `rundir.open_run` accepted."""
  started = time.perf_counter()  # the run's wall_s counts its data loading and source restore
  done = rundir.finished(run_dir)
  if done is not None:
    logging.info("[%s] %s is complete (test_accuracy %.4f): reusing it; move it away to retrain",
                 mode, run_dir, done["final"]["test_accuracy"])
    return done
  spec = spec_lib.RunSpec.create(mode, config)
  where = spec_lib.PHASES[mode]
  task = _load_task(spec.phase, config, where)
  variables, init, stats_from = None, None, f"{task.name} training split"
  if mode == "transfer":
    variables, init, pretrain_s = _from_source(run_dir, config, workdir, source, task, placement)
    started += pretrain_s  # the pretraining's time is its own
    if config.transfer.normalize == "source":
      mean, std = source_lib.statistics(init)
      task, stats_from = dataclasses.replace(task, mean=mean, std=std), init["run"]
  if parallel.is_main_process():
    rundir.write_json(os.path.join(run_dir, rundir.STATS_FILE), {
        "mean": task.mean.tolist(), "std": task.std.tolist(), "from": stats_from})
  result = run_lib.fit(spec, task, run_dir, placement=placement, variables=variables,
                     started=started)
  summary = {"mode": mode, "seed": config.seed, **result.summary}
  if init is not None:
    summary["init"] = init
  if parallel.is_main_process():
    rundir.write_json(os.path.join(run_dir, "summary.json"), summary)
  parallel.sync(f"finished {run_dir}")  # every process sees the run as finished from here on
  final = result.history[-1]
  logging.info("[%s] done in %.1fs: test_accuracy %.4f, test_loss %.4f; wrote %s", mode,
               result.summary["wall_s"], final["test_accuracy"], final["test_loss"], run_dir)
  return summary
