"""Optional experiment tracking with Weights & Biases (the `track` extra).

Off unless `config.track.wandb_project` is set. Process 0 alone talks to wandb. Each training run
is one wandb run: its config (config.json's record), every `log_every_steps` window of training
scalars (`train/...`) and every evaluation record, at the global step. The run's id comes from
its folder, so a resumed run continues the same wandb run (wandb keeps the steps it already has:
the steps a resume replays after its checkpoint are not sent again). The report (`--mode=compare`,
`--mode=report`) is one more run, `report`, holding its PNGs as images and the claims' verdicts.

Nothing about the machine goes to wandb beyond what it is told: console capture, system metrics,
the environment and git metadata, code and requirements saving are all switched off. The API key
is wandb's business (`wandb login` or WANDB_API_KEY); tlflax never reads or writes it.
`wandb_mode='offline'` (or WANDB_MODE=offline) keeps everything on the machine, for `wandb sync`.
"""

import hashlib
import importlib.util
import io
import os

from tlflax.errors import UserError
from tlflax.io import rundir, storage


def enabled(track) -> bool:
  return bool(track is not None and track.wandb_project)


def check(track) -> None:
  """A `UserError` when tracking is asked for and wandb cannot be imported."""
  if enabled(track) and importlib.util.find_spec("wandb") is None:
    raise UserError("config.track.wandb_project is set but wandb is not installed: install the "
                    "track extra, pip install -e '.[track]' in the tlflax checkout (or unset "
                    "config.track.wandb_project)")


def _init(track, run_id: str, name: str, group: str, config: dict, job: str):
  import wandb  # the optional extra tlflax[track], imported only when tracking is on
  settings = wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True,
                            disable_git=True, save_code=False, x_save_requirements=False)
  return wandb.init(project=track.wandb_project, entity=track.wandb_entity or None,
                    mode=track.wandb_mode or None, dir=track.wandb_dir or None, id=run_id,
                    name=name, group=group, job_type=job, config=config, resume="allow",
                    settings=settings, reinit="create_new")


def _run_id(path: str, kind: str) -> str:
  """A stable wandb id for a run folder (or a workdir's report), wherever it is run from."""
  return hashlib.sha256(f"{kind}:{storage.absolute(path)}".encode()).hexdigest()[:16]


class RunTracker:
  """One training run's wandb run: scalars at global steps, then finish."""

  def __init__(self, track, run_dir: str, mode: str, record: dict):
    run_dir = run_dir.rstrip("/")
    parent, leaf = os.path.split(run_dir)
    study = record.get("study") or {}
    name = f"{os.path.basename(parent)}/{leaf}" if leaf.startswith("seed_") else leaf
    workdir = os.path.dirname(parent) if leaf.startswith("seed_") else parent
    self._run = _init(track, _run_id(run_dir, "run"), name, os.path.basename(workdir) or workdir,
                      record, study.get("experiment") or mode)

  def log(self, step: int, scalars: dict, prefix: str = "") -> None:
    self._run.log({f"{prefix}{k}": v for k, v in scalars.items()
                   if isinstance(v, (int, float)) and k != "step"}, step=step)

  def finish(self) -> None:
    self._run.finish()


def for_run(spec, run_dir: str) -> RunTracker | None:
  """The tracker of the training run `spec` (a `spec.RunSpec`) in `run_dir`, or None when
  tracking is off (call on process 0 only). Its config is the run's config.json, else the keys
  that decide its result."""
  if not enabled(spec.track):
    return None
  record = rundir.read_json(storage.join(run_dir, "config.json")) or {"mode": spec.mode,
                                                                      **spec.hparams}
  return RunTracker(spec.track, run_dir, spec.mode, record)


def report(track, workdir: str, report_dir: str, summary: dict) -> None:
  """Sends the report's PNGs as images and its verdicts, as the workdir's `report` run."""
  if not enabled(track):
    return
  import wandb  # tlflax[track], as in _init
  from PIL import Image  # installed with wandb's image support
  workdir = workdir.rstrip("/")
  run = _init(track, _run_id(workdir, "report"), "report", os.path.basename(workdir) or workdir,
              {"workdir": workdir}, "report")
  # The figures the report drew, read through storage: the report may be on a bucket.
  images = {f"report/{name[:-4]}": wandb.Image(Image.open(io.BytesIO(
      storage.read_bytes(storage.join(report_dir, name))))) for name in summary["figures"]}
  verdicts = {f"claim_{i}": f"{c['verdict']}: {c['claim']} ({c['evidence']})"
              for i, c in enumerate(summary.get("claims") or [], 1)}
  run.log(images)
  run.summary.update(verdicts)
  run.finish()
