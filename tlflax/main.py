"""Command line: `tlflax --mode=MODE --config=NAME|FILE --workdir=DIR [--config.KEY=VALUE ...]`
(or `python -m tlflax.main ...`).

--config is the name of a shipped config (listed under --config below, with the argument each
takes as NAME:ARG; docs/config.md says what each is) or the path of your own config file.

Modes:
  pretrain  train on the source dataset                         -> DIR/pretrain/
  scratch   train on the target dataset from random weights     -> DIR/scratch/
  transfer  start from the source model, new head, target data  -> DIR/transfer/
  compare   the study: scratch and every transfer arm (config.arms) at every label budget
            (config.label_budgets) for every seed in config.seeds, sharing one pretraining,
            then the report       -> DIR/scratch/seed_N/, DIR/transfer_<arm>/seed_N/, DIR/report/
  report    redraw DIR/report/ from the metrics on disk
  config    print every config key (after the overrides) with its value and meaning, and exit
  rank      score candidate sources (config.rank.sources) on the target before fine-tuning:
            LogME, LEEP, NCE, a linear probe, per stage, a suggested freeze -> DIR/rank/
  evaluate  a trained model (--model=PATH) on a split, with per-class figures -> DIR/evaluate/
  predict   a trained model on image files (--input=FOLDER|GLOB|FILES)    -> DIR/predict/
  export    a trained model for serving: jax.export and a SavedModel      -> DIR/export/
--model takes a run folder, one of its checkpoints, a safetensors file or hf://ORG/NAME.
Rerunning a command on the same workdir resumes interrupted runs and reuses finished ones.
Exit codes: 0 done; 2 a mistake the user can fix (one line on stderr, `--verbose` adds the
traceback); 3 diverged (non-finite loss); 130 / 143 interrupted by SIGINT / SIGTERM after saving a
checkpoint of the last step (rerun the same command to resume).

Every device of the host trains (data parallel). For several hosts, start the same command on
each: `--distributed` on a Cloud TPU VM or under SLURM, or `--coordinator=HOST:PORT
--num_processes=N --process_id=I`; process 0 writes the metrics, summaries and report.
"""

import logging as logging_std
import os
import sys
import traceback

import jax
from absl import app, flags, logging

from tlflax import parallel
from tlflax.config import cli as cli_lib
from tlflax.errors import DIVERGED, Stopped, UserError
from tlflax.io import storage
from tlflax.study import experiments
from tlflax.train import checks, preemption, tracking
from tlflax.train import phase as phase_lib
from tlflax.use import evaluate, export, prediction, rank

MODES = ("pretrain", "scratch", "transfer", "compare", "report", "config", "rank", "evaluate",
         "predict", "export")
USING = ("evaluate", "predict", "export")  # modes that use a trained model (--model)

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "compare", f"What to run: one of {', '.join(MODES)}.")
flags.DEFINE_string("workdir", "runs", "Folder that receives one sub-folder per run.")
flags.DEFINE_bool("distributed", False, "Start jax.distributed from the cluster's environment "
                  "(Cloud TPU VM, SLURM, Open MPI); implied inside a multi-task SLURM step.")
flags.DEFINE_string("coordinator", "", "HOST:PORT of process 0, to run as one of several "
                    "processes (with --num_processes and --process_id).")
flags.DEFINE_integer("num_processes", 0, "Number of processes (with --coordinator).")
flags.DEFINE_integer("process_id", -1, "This process's index, 0..N-1 (with --coordinator).")
flags.DEFINE_bool("verbose", False, "On an error, show the full traceback too (for bug reports).")
flags.DEFINE_string("model", "", "evaluate / predict / export: a run folder, one of its "
                    "checkpoints, a safetensors file or hf://ORG/NAME.")
flags.DEFINE_string("input", "", "predict: a folder of images, a quoted glob, or files separated "
                    "by commas.")


def _fail(message: str) -> None:
  print(f"tlflax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """The flags, `--config` loaded by `cli.parse`; a mistake ends in one line and exit 2."""
  try:
    return cli_lib.parse(argv)
  except UserError as e:
    _fail(str(e))
  return []


class _OwnInfoOnly(logging_std.Filter):
  """INFO lines from tlflax only; other libraries (orbax, jax, tfds) still show warnings."""

  def filter(self, record) -> bool:
    if str(record.msg).startswith("Requested `tracked_metric`"):
      return False  # orbax, on a checkpoint saved inside an epoch (no test accuracy yet)
    return record.levelno >= logging_std.WARNING or f"{os.sep}tlflax{os.sep}" in record.pathname


def _setup_jax() -> None:
  """Persistent compilation cache: a rerun of the same config skips XLA compilation."""
  cache = os.environ.get("TLFLAX_JAX_CACHE", os.path.expanduser("~/.cache/tlflax/jax"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def run(mode: str, config, workdir: str, model: str = "", input_spec: str = ""):
  """Validates the config and dispatches to the mode (`model`, `input_spec`: --model, --input)."""
  if mode not in MODES:
    raise UserError(f"unknown --mode={mode}: choose one of {', '.join(MODES)}")
  storage.check(workdir)
  storage.check(model, "--model")
  if mode == "report":
    tracking.check(config.track)
    return experiments.write_report(workdir, config.report.include_unfinished, config.track)
  checks.validate(config)
  storage.check(config.transfer.init_from, "--config.transfer.init_from")
  if mode == "config":
    print(cli_lib.describe(config), flush=True)
    return None
  if mode == "transfer":
    checks.arm_rules(config, arms=False)
  elif mode == "compare":
    checks.arm_rules(config)
  placement = parallel.Placement.create(config.parallel)
  if mode in USING:
    return _use(mode, config, workdir, model, input_spec, placement)
  if mode == "rank":
    out = rank.run(config, workdir, placement)
    logging.info("rank: wrote %s", out)
    return out
  if mode == "compare":
    return experiments.run_compare(config, workdir, placement)
  return phase_lib.run_phase(mode, config, workdir, placement=placement)


def _use(mode: str, config, workdir: str, model: str, input_spec: str, placement) -> str:
  """The modes that use a trained model; returns the folder they wrote."""
  if not model:
    raise UserError(f"--mode={mode} needs --model=PATH: a run folder, one of its checkpoints, a "
                    "safetensors file or hf://ORG/NAME")
  if mode == "evaluate":
    out = evaluate.evaluate(model, config, workdir, placement)
  elif mode == "predict":
    if not input_spec:
      raise UserError("--mode=predict needs --input=PATH: a folder of images, a quoted glob, or "
                      "files separated by commas")
    out = prediction.run(model, input_spec, config, workdir, placement)
  else:
    out = export.run(model, workdir)
  logging.info("%s: wrote %s", mode, out)
  return out


def _start_devices() -> None:
  """jax.distributed when this is one process of several, then the accelerator check; logs what
  the run trains on (only process 0 logs INFO lines)."""
  parallel.initialize(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id,
                      FLAGS.distributed)
  parallel.check_accelerator()
  if not parallel.is_main_process():
    logging.set_verbosity(logging.WARNING)
  d = parallel.describe()
  logging.info("%s backend: %d device(s) (%s), %d process(es)", d["backend"], d["devices"],
               d["device_kind"], d["processes"])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])}: flags take the form --name=value")
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_OwnInfoOnly())
  _setup_jax()
  try:
    if FLAGS.mode == "config":  # no devices, no distributed runtime: only the config
      run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
      return
    _start_devices()
    preemption.install(parallel.describe()["processes"])
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir, FLAGS.model, FLAGS.input)
  except UserError as e:
    if FLAGS.verbose:
      traceback.print_exc()
    _fail(str(e))
  except Stopped as e:
    if FLAGS.verbose:
      traceback.print_exc()
    kind = "error: " if e.exit_code == DIVERGED else ""
    print(f"tlflax: {kind}{e}", file=sys.stderr, flush=True)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:
    print("tlflax: interrupted (a second Ctrl-C: no checkpoint of the current step; rerun the "
          "same command to resume from the last one)", file=sys.stderr)
    sys.exit(130)


def cli() -> None:
  """Console-script entry point (`tlflax ...`), same as `python -m tlflax.main`.

  absl's --help/--helpshort show the flags and docstring of the module that `sys.argv[0]` names;
  under the console script that is the `tlflax` script, so this module lends it both.
  """
  if __name__ != "__main__":
    script = sys.argv[0]
    for flag in FLAGS.get_key_flags_for_module(__name__):
      FLAGS.register_key_flag_for_module(script, flag)
    sys.modules["__main__"].__doc__ = __doc__
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
