"""Command line: `python -m tlflax.main --mode=MODE --config=PATH --workdir=DIR [--config.KEY=V]`.

Modes: `pretrain` trains on the source dataset into DIR/pretrain/; `scratch` trains on the
target dataset from random weights into DIR/scratch/. Every mistake a user can make ends in one
line on stderr and exit code 2.
"""

import json
import os
import pathlib
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from tlflax.errors import UserError

MODES = ("pretrain", "scratch")
DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parent.parent / "configs" / "cifar10_to_cifar100.py"

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "scratch", f"What to run: one of {', '.join(MODES)}.")
flags.DEFINE_string("workdir", "runs", "Folder that receives one sub-folder per run.")
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
    _fail(f"unknown config key {_first_line(e)} in a --config.KEY=VALUE override: "
          "use a key that the config file defines")
  return []


def _config_path(argv: list[str]) -> str:
  return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")),
              str(DEFAULT_CONFIG))


def _first_line(e: BaseException) -> str:
  text = str(e).strip().strip("\"'")
  return text.splitlines()[0] if text else type(e).__name__


def _setup_jax() -> None:
  """Persistent compilation cache: a rerun of the same config skips XLA compilation."""
  import jax
  cache = os.environ.get("TLFLAX_JAX_CACHE", os.path.expanduser("~/.cache/tlflax/jax"))
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _prepare_run_dir(workdir: str, name: str) -> str:
  """Creates DIR/name; refuses a folder that already holds a run, so nothing is overwritten."""
  run_dir = os.path.join(workdir, name)
  if os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
    raise UserError(f"{run_dir} already holds a run (metrics.jsonl): choose another --workdir "
                    "or move that folder away")
  try:
    os.makedirs(run_dir, exist_ok=True)
  except OSError as e:
    raise UserError(f"cannot create run folder {run_dir} ({e.strerror}): choose a writable "
                    "--workdir") from e
  return run_dir


def _write_json(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def run_phase(mode: str, config, workdir: str) -> dict:
  """Runs one training phase (`pretrain` on source, `scratch` on target) and returns its summary."""
  from tlflax import data, train
  phase = config.source if mode == "pretrain" else config.target
  run_dir = _prepare_run_dir(workdir, mode)
  _write_json(os.path.join(run_dir, "config.json"), {"mode": mode, **config.to_dict()})
  task = data.load_task(phase, config.data_dir, config.seed)
  result = train.fit(phase, config.model, task, run_dir, config.seed,
                     log_every_steps=config.log_every_steps,
                     eval_every_epochs=config.eval_every_epochs, label=mode)
  _write_json(os.path.join(run_dir, "summary.json"), {"mode": mode, **result.summary})
  final = result.history[-1]
  logging.info("[%s] done in %.1fs: test_accuracy %.4f, test_loss %.4f; wrote %s", mode,
               result.summary["wall_s"], final["test_accuracy"], final["test_loss"], run_dir)
  return result.summary


def run(mode: str, config, workdir: str) -> dict:
  """Validates the config and dispatches to the mode."""
  from tlflax import config as config_lib
  if mode not in MODES:
    raise UserError(f"unknown --mode={mode}: choose one of {', '.join(MODES)}")
  config_lib.validate(config)
  return run_phase(mode, config, workdir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {' '.join(argv[1:])}: flags take the form --name=value")
  logging.set_verbosity(logging.INFO)
  _setup_jax()
  try:
    run(FLAGS.mode, FLAGS.config, FLAGS.workdir)
  except UserError as e:
    _fail(str(e))
  except KeyboardInterrupt:
    print("tlflax: interrupted", file=sys.stderr)
    sys.exit(130)


def cli() -> None:
  """Console-script entry point (`tlflax ...`), same as `python -m tlflax.main`."""
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  cli()
