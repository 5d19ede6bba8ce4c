"""Command line: `python -m tlflax.main --mode=MODE --config=PATH --workdir=DIR [--config.KEY=V]`.

Modes:
  pretrain  train on the source dataset                         -> DIR/pretrain/
  scratch   train on the target dataset from random weights     -> DIR/scratch/
  transfer  start from the source model, new head, target data  -> DIR/transfer/
  compare   scratch and transfer for every seed in config.seeds, sharing one pretraining,
            then the report                                     -> DIR/{scratch,transfer}/seed_N/
  report    redraw DIR/report/ from the metrics on disk
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
import pathlib
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from tlflax.errors import DIVERGED, Stopped, UserError

MODES = ("pretrain", "scratch", "transfer", "compare", "report")
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "cifar10_to_cifar100.py"

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
try:
  # Without --config, config_flags loads the default and applies --config.KEY overrides from
  # sys.argv right here, at definition; keep that error for _parse_flags to report in one line.
  config_flags.DEFINE_config_file("config", str(DEFAULT_CONFIG), "Experiment config file.",
                                  lock_config=True)
  _DEFINE_ERROR = None
except (OSError, AttributeError, KeyError) as e:
  _DEFINE_ERROR = e


def _fail(message: str) -> None:
  print(f"tlflax: error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, but a bad flag or config ends in one line and exit 2, not a usage dump."""
  try:
    if _DEFINE_ERROR is not None:
      raise _DEFINE_ERROR
    rest = FLAGS(argv)
    FLAGS.config.keys()  # a config file that failed to load raises only when touched
    return rest
  except flags.Error as e:
    _fail(f"{_first_line(e)} (see --helpshort)")
  except OSError as e:
    reason = str(e.__cause__ or e).strip().splitlines()[-1].strip()
    _fail(f"cannot load config file {_config_path(argv)} ({reason}): "
          "pass an existing file, e.g. --config=configs/smoke.py")
  except (AttributeError, KeyError) as e:
    if "get_config" in str(e):
      _fail(f"config file {_config_path(argv)} defines no get_config(): "
            "pass a tlflax config file, e.g. --config=configs/smoke.py")
    message = _message(e)
    hint = next((line.strip().rstrip("'") for line in message.splitlines()[1:] if "did you mean" in
                 line.lower()), "")
    _fail(f"unknown config key {_first_line(e)} in a --config.KEY=VALUE override"
          f"{' (' + hint + ')' if hint else ''}: use a key that the config file defines")
  return []


def _config_path(argv: list[str]) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              str(DEFAULT_CONFIG))


def _message(e: BaseException) -> str:
  """An exception's text; a KeyError's str() is the repr of its message (escaped quotes and
  newlines), which ml_collections passes on inside other errors too."""
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
  return text.replace("\\n", "\n").replace("\\'", "'").strip()


def _first_line(e: BaseException) -> str:
  text = _message(e)
  line = text.splitlines()[0].strip() if text else type(e).__name__
  return line.strip("\"'") if " " not in line else line  # a KeyError's quoted key


class _OwnInfoOnly(logging_std.Filter):
  """INFO lines from tlflax only; other libraries (orbax, jax, tfds) still show warnings."""

  def filter(self, record) -> bool:
    if str(record.msg).startswith("Requested `tracked_metric`"):
      return False  # orbax, on a checkpoint saved inside an epoch (no test accuracy yet)
    return record.levelno >= logging_std.WARNING or f"{os.sep}tlflax{os.sep}" in record.pathname


def _setup_jax() -> None:
  """Persistent compilation cache: a rerun of the same config skips XLA compilation."""
  import jax
  cache = os.environ.get("TLFLAX_JAX_CACHE", os.path.expanduser("~/.cache/tlflax/jax"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _source_variables(config, init: dict, target_task, placement) -> tuple[dict, dict]:
  """The target's initial variables (the source checkpoint merged into a fresh init, on the
  devices of `placement`) and `init` completed with the checkpoint and step they came from."""
  from tlflax import checkpoint, train, transfer
  restored, name = checkpoint.restore_variables(config.transfer.init_from or init["run"],
                                                placement.replicated)
  fresh = placement.replicate(train.init_variables(
      config.model, target_task.num_classes, target_task.train.images.shape[1:], config.seed))
  merged = transfer.merge_pretrained(fresh, restored, config.transfer.reinit, name)
  return merged, {**init, "checkpoint": name, "step": int(name.rsplit("/", 1)[1])}


def _load_task(phase, config):
  """The phase's dataset. Process 0 loads first, preparing it with tfds if needed, so several
  processes never download into one data_dir at once; the others then read what it prepared."""
  from tlflax import data, parallel
  task = data.load_task(phase, config.data_dir, config.seed) if parallel.is_main_process() \
      else None
  parallel.sync(f"loaded {phase.dataset}")
  return task if task is not None else data.load_task(phase, config.data_dir, config.seed)


def ensure_pretrained(config, workdir: str, placement=None) -> str:
  """DIR/pretrain, after pretraining there if no finished pretraining exists. A finished one is
  reused only if its config agrees with today's `seed`, `model` and `source`; else `run_phase`
  refuses it."""
  from tlflax import rundir
  run_dir = os.path.join(workdir, "pretrain")
  if rundir.finished(run_dir) is None:
    logging.info("no finished pretraining in %s: pretraining on %s first", run_dir,
                 config.source.dataset)
  run_phase("pretrain", config, workdir, placement=placement)
  return run_dir


def run_phase(mode: str, config, workdir: str, run_dir: str | None = None,
              source: dict | None = None, placement=None) -> dict:
  """Runs (or resumes, or reuses) one training run and returns its summary.

  `source` (transfer only): the `rundir.source_identity` to start from, already trained (compare
  passes it for every seed); by default it is derived from the config and `DIR/pretrain` is
  trained first if needed. A start that fails before anything is trained leaves no folder.
  """
  from tlflax import parallel, rundir
  placement = placement or parallel.Placement.create(config.parallel)
  run_dir = run_dir or os.path.join(workdir, mode)
  init = None
  if mode == "transfer":
    init = source or rundir.source_identity(config, workdir)
    if source is None and not config.transfer.init_from:  # a stale pretraining: refuse now
      rundir.refuse_if_changed(os.path.join(workdir, "pretrain"), "pretrain",
                               rundir.record_of("pretrain", config))
  created = rundir.open_run(run_dir, mode, config, init)
  try:
    return _train_in(run_dir, mode, config, workdir, init, source is None, placement)
  except BaseException:
    rundir.discard_untrained(created)
    raise


def _train_in(run_dir, mode, config, workdir, init, pretrain_first, placement) -> dict:
  """The body of `run_phase`, in a run folder that `rundir.open_run` accepted."""
  from tlflax import checkpoint, parallel, rundir, train
  done = rundir.finished(run_dir)
  if done is not None:
    logging.info("[%s] %s is complete (test_accuracy %.4f): reusing it; move it away to retrain",
                 mode, run_dir, done["final"]["test_accuracy"])
    return done
  phase = config.source if mode == "pretrain" else config.target
  task = _load_task(phase, config)
  variables = None
  if mode == "transfer":
    if checkpoint.steps_in(os.path.join(run_dir, "checkpoints")):
      init = (rundir.read_json(os.path.join(run_dir, "config.json")) or {}).get("init", init)
    else:
      if pretrain_first and not config.transfer.init_from:
        ensure_pretrained(config, workdir, placement)
      variables, init = _source_variables(config, init, task, placement)
      rundir.record_init(run_dir, init)
  result = train.fit(phase, config.model, task, run_dir, config.seed, placement=placement,
                     transfer_cfg=config.transfer if mode == "transfer" else None,
                     variables=variables, checkpoint_cfg=config.checkpoint.to_dict(),
                     log_every_steps=config.log_every_steps,
                     eval_every_epochs=config.eval_every_epochs, label=mode)
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


def _write_report(workdir: str) -> str:
  """The report, drawn by process 0 only (every process checks there is something to report)."""
  from tlflax import parallel, report
  out = os.path.join(workdir, "report")
  summary = report.require_runs(workdir)
  if parallel.is_main_process():
    out = report.write_report(workdir, summary)
    logging.info("report written to %s", out)
  parallel.sync("report")
  return out


def run_compare(config, workdir: str, placement=None) -> str:
  """Experiments A (scratch) and B (transfer) for every seed, sharing one pretraining; report."""
  from tlflax import rundir
  source = rundir.source_identity(config, workdir)
  if not config.transfer.init_from:
    ensure_pretrained(config, workdir, placement)
  for seed in config.seeds:
    seeded = config.copy_and_resolve_references()
    with seeded.unlocked():
      seeded.seed = int(seed)
    for mode in ("scratch", "transfer"):
      run_phase(mode, seeded, workdir, os.path.join(workdir, mode, f"seed_{seed}"),
                source if mode == "transfer" else None, placement)
  return _write_report(workdir)


def run(mode: str, config, workdir: str):
  """Validates the config and dispatches to the mode."""
  from tlflax import config as config_lib
  from tlflax import parallel
  if mode not in MODES:
    raise UserError(f"unknown --mode={mode}: choose one of {', '.join(MODES)}")
  if mode == "report":
    return _write_report(workdir)
  config_lib.validate(config)
  if mode in ("transfer", "compare"):
    from tlflax import models, train, transfer
    shapes = train.variable_shapes(config.model, 2, (config.target.image_size,) * 2 + (3,))
    transfer.check_rules(config.transfer, shapes["params"], models.num_stages(config.model.name))
  placement = parallel.Placement.create(config.parallel)
  if mode == "compare":
    return run_compare(config, workdir, placement)
  return run_phase(mode, config, workdir, placement=placement)


def _start_devices() -> None:
  """jax.distributed when this is one process of several, then the accelerator check; logs what
  the run trains on (only process 0 logs INFO lines)."""
  from tlflax import parallel
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
    _start_devices()
    from tlflax import parallel, preemption
    preemption.install(parallel.describe()["processes"])
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
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
  """Console-script entry point (`tlflax ...`), same as `python -m tlflax.main`."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
