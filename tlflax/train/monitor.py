"""What a run tells the user while it trains: metrics files, TensorBoard events, progress, and
the `Recorder` that holds them together for one run (its history and its time)."""

import importlib
import json
import math
import sys
import tempfile
import time
from typing import Self

from absl import logging
from tqdm import tqdm

from tlflax.io import storage


def _without_torch(name: str):
  """Imports module `name` with `import torch` failing, unless torch is loaded already.
  tensorboardX's writer imports PyTorch when it is installed, only to accept torch tensors, which
  tlflax never passes: 1.4 s of every start-up (measured with `python -X importtime`)."""
  if "torch" in sys.modules:
    return importlib.import_module(name)
  sys.modules["torch"] = None  # makes `import torch` raise ImportError
  try:
    return importlib.import_module(name)
  finally:
    del sys.modules["torch"]


SummaryWriter = _without_torch("tensorboardX").SummaryWriter
hparams_summary = _without_torch("tensorboardX.summary").hparams

_TB_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_top5", "val_loss",
            "val_accuracy", "learning_rate", "img_per_s")


_STEP_FILE = "train_steps.jsonl"
# What TensorBoard's HParams view compares runs on.
HPARAM_METRICS = ("test_accuracy", "test_loss", "val_accuracy", "train_loss")


class MetricsWriter:
  """Appends one JSON object per evaluation to `metrics.jsonl`, the training scalars of every
  `log_every_steps` window to `train_steps.jsonl`, and mirrors both to TensorBoard (tensorboardX:
  event files without importing TensorFlow into the training process), with the run's
  hyperparameters for the HParams view.

  `history` (a resumed run's records up to its checkpoint, at global step `resumed_step`):
  TensorBoard's event files are written afresh from the two files, cut at the checkpoint, so the
  scalars of steps that were rolled back do not show twice.
  """

  def __init__(self, run_dir: str, history: list[dict] | None = None, resumed_step: int = 0,
               hparams: dict | None = None):
    storage.makedirs(run_dir)
    self.run_dir = run_dir
    self.path = storage.join(run_dir, "metrics.jsonl")
    self.step_path = storage.join(run_dir, _STEP_FILE)
    step_records = []
    if history is not None:
      for old in storage.glob(run_dir, "events.out.tfevents.*"):
        storage.remove(old)  # derived from the two files, rewritten below
      step_records = [r for r in _read_jsonl(self.step_path) if r["step"] <= resumed_step]
    _write_jsonl(self.step_path, step_records)
    # tensorboardX writes local files: on a store, into a local folder uploaded at each
    # evaluation and at the end.
    self._staging = None
    if storage.is_remote(run_dir):
      self._staging = tempfile.TemporaryDirectory(prefix="tlflax-tb-")
    self._tb = SummaryWriter(self._staging.name if self._staging else run_dir, flush_secs=30)
    if hparams:
      self._hparams(hparams)
    for record in history or ():
      self._scalars(record)
    for record in step_records:
      self._step_scalars(record)

  def _hparams(self, hparams: dict) -> None:
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in hparams.items()}
    for summary in hparams_summary(values, {k: 0.0 for k in HPARAM_METRICS}):
      self._tb._get_file_writer().add_summary(summary)

  def write(self, record: dict) -> None:
    storage.append_text(self.path, json.dumps(record) + "\n")
    self._scalars(record)
    self._tb.flush()
    self._upload()

  def write_step(self, record: dict) -> None:
    """One window: {'step', 'first_step', 'steps', 'train_loss', 'train_accuracy',
    'learning_rate', 'img_per_s'} (means over steps first_step..step) -> train_steps.jsonl and
    TensorBoard's `step/` tags."""
    storage.append_text(self.step_path, json.dumps(record) + "\n")
    self._step_scalars(record)

  def _upload(self) -> None:
    if self._staging is not None:
      storage.upload(self._staging.name, self.run_dir)

  def _scalars(self, record: dict) -> None:
    for key in _TB_KEYS:
      if key in record:
        self._tb.add_scalar(key, record[key], record["step"])

  def _step_scalars(self, record: dict) -> None:
    for key, value in record.items():
      if key not in ("step", "first_step", "steps"):
        self._tb.add_scalar(f"step/{key}", value, record["step"])

  def close(self) -> None:
    self._tb.close()
    self._upload()
    if self._staging is not None:
      self._staging.cleanup()


def _read_jsonl(path: str) -> list[dict]:
  text = storage.read_text(path)
  return [json.loads(line) for line in (text or "").splitlines() if line.strip()]


def _write_jsonl(path: str, records: list[dict]) -> None:
  storage.write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def read_steps(run_dir: str) -> list[dict]:
  """The per-window training scalars of a run (`train_steps.jsonl`)."""
  return _read_jsonl(storage.join(run_dir, _STEP_FILE))


def selection_key(history: list[dict]) -> str:
  """The metric that picks a run's best epoch: val_accuracy when it was evaluated on a
  validation split, else test_accuracy."""
  return "val_accuracy" if history and "val_accuracy" in history[-1] else "test_accuracy"


def best_record(history: list[dict], key: str | None = None) -> dict | None:
  """The record of the best epoch by `key` (default `selection_key`), the earliest of equals;
  a non-finite value is never the best (None when no value is finite)."""
  if not history:
    return None
  key = key or selection_key(history)
  finite = [r for r in history if math.isfinite(r[key])]
  return max(finite, key=lambda r: (r[key], -r["epoch"])) if finite else None


def nonfinite(record: dict) -> list[str]:
  """The keys of an epoch record whose value is a non-finite float."""
  return [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]


def write_event(run_dir: str, event: dict) -> None:
  """Appends an event (`{"event": "diverged", ...}`) to metrics.jsonl; readers of the per-epoch
  records skip it."""
  storage.append_text(storage.join(run_dir, "metrics.jsonl"), json.dumps(event) + "\n")


def _read_lines(run_dir: str) -> list[dict]:
  return _read_jsonl(storage.join(run_dir, "metrics.jsonl"))


def read_metrics(run_dir: str) -> list[dict]:
  """The per-epoch records of a run's `metrics.jsonl` (empty if there is none)."""
  return [r for r in _read_lines(run_dir) if "event" not in r]


def read_events(run_dir: str) -> list[dict]:
  """The events of a run's `metrics.jsonl` (divergence, interruption), oldest first."""
  return [r for r in _read_lines(run_dir) if "event" in r]


def truncate_metrics(run_dir: str, last_epoch: int) -> list[dict]:
  """Drops the records after `last_epoch` (the part of a run that a resume rolls back), keeps
  every event, and returns the records kept."""
  lines = _read_lines(run_dir)
  kept = [r for r in lines if "event" in r or r["epoch"] <= last_epoch]
  _write_jsonl(storage.join(run_dir, "metrics.jsonl"), kept)
  return [r for r in kept if "event" not in r]


def _fmt_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
  """A tqdm bar per epoch on a terminal; plain log lines (loss, img/s, ETA) otherwise.

  `quiet` (every process but the first of a multi-process run) shows nothing.
  """

  def __init__(self, label: str, epochs: int, steps_per_epoch: int, batch_size: int,
               log_every_steps: int, stream=None, quiet: bool = False):
    self.label = label
    self.quiet = quiet
    self.epochs = epochs
    self.steps = steps_per_epoch
    self.batch_size = batch_size
    self.every = max(1, log_every_steps)
    self.stream = stream or sys.stderr
    self.tty = self.stream.isatty() and not quiet
    self._bar = None
    # The ETA counts time inside epochs only: compilation, evaluation and checkpoints are not
    # training, and a resumed phase counts only the steps it has left.
    self._timed_s = 0.0
    self._timed_steps = 0

  def note(self, message: str) -> None:
    if self.quiet:
      return
    if self._bar is not None:
      self._bar.write(f"[{self.label}] {message}")
    else:
      logging.info("[%s] %s", self.label, message)

  def start_epoch(self, epoch: int, first: int = 0) -> None:
    """Epoch `epoch` (0-based) starts, or resumes after its first `first` steps."""
    self.epoch = epoch
    self._first = self._last = first
    self._epoch_t0 = time.perf_counter()
    if self.tty:
      self._bar = tqdm(total=self.steps, initial=first, unit="step", file=self.stream,
                       desc=f"{self.label} epoch {epoch + 1}/{self.epochs}", leave=False,
                       dynamic_ncols=True)

  def wants_update(self, step_in_epoch: int) -> bool:
    if self.quiet:
      return False
    return (step_in_epoch + 1) % self.every == 0 or step_in_epoch + 1 == self.steps

  def update(self, steps_done: int, mean_loss: float) -> None:
    now = time.perf_counter()
    img_s = (steps_done - self._first) * self.batch_size / max(now - self._epoch_t0, 1e-9)
    if self._bar is not None:
      self._bar.update(steps_done - self._last)
      self._bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{img_s:.0f}")
    else:
      remaining = (self.epochs - self.epoch) * self.steps - steps_done
      seconds_per_step = ((self._timed_s + now - self._epoch_t0)
                          / max(self._timed_steps + steps_done - self._first, 1))
      eta = remaining * seconds_per_step
      logging.info("[%s] epoch %d/%d step %d/%d loss %.4f %.0f img/s eta %s", self.label,
                   self.epoch + 1, self.epochs, steps_done, self.steps, mean_loss, img_s,
                   _fmt_duration(eta))
    self._last = steps_done

  def end_epoch(self, train_loss: float) -> None:
    self._timed_s += time.perf_counter() - self._epoch_t0
    self._timed_steps += self.steps - self._first
    if self._bar is not None:
      self._bar.close()
      self._bar = None


SECONDS = ("wall_s", "train_s", "compile_s", "load_s")


class Recorder:
  """What one run leaves for its user, and what it remembers of itself: the metric history
  (`metrics.jsonl`, `train_steps.jsonl` and TensorBoard, from process 0 only, and a `tracker`'s
  run when tracking is on), the progress line, and its time (`SECONDS`, summed over the attempts
  of a resumed run).

  `started` (a `time.perf_counter()` reading, default now): when the run's work began; the time
  before the recorder (loading the data, restoring a source) counts as `load_s`.
  """

  def __init__(self, run_dir: str, label: str, plan, quiet: bool = False,
               started: float | None = None, tracker=None):
    now = time.perf_counter()
    self.run_dir, self.plan, self.main = run_dir, plan, not quiet
    self.progress = Progress(label, plan.epochs, plan.steps_per_epoch, plan.batch_size,
                             plan.log_every, quiet=quiet)
    self.history: list[dict] = []
    self._started = now if started is None else started
    self._earlier = dict.fromkeys(SECONDS, 0.0)  # of earlier attempts
    self._seconds = dict.fromkeys(SECONDS[1:], 0.0)  # of this one, wall_s aside
    self._seconds["load_s"] = now - self._started
    self._writer = None
    self._tracker = tracker  # a `tracking.RunTracker` (process 0, tracking on) or None

  def note(self, message: str) -> None:
    self.progress.note(message)

  def open(self, hparams: dict, resumed: tuple[int, int, dict] | None = None) -> None:
    """Starts writing: afresh, or for a run `resumed` = (epoch, global step, seconds of earlier
    attempts) from a checkpoint, whose later records were rolled back."""
    if resumed is not None:
      epoch, _step, earlier = resumed
      self._earlier.update(earlier)
      self.history = [r for r in read_metrics(self.run_dir) if r["epoch"] <= epoch]
      if self.main:
        truncate_metrics(self.run_dir, epoch)
    elif self.main and read_metrics(self.run_dir):
      truncate_metrics(self.run_dir, 0)  # stopped before its first checkpoint: start over
    if self.main:
      self._writer = MetricsWriter(self.run_dir, self.history if resumed else None,
                                   resumed[1] if resumed else 0, hparams)

  def add_time(self, kind: str, seconds: float) -> None:
    self._seconds[kind] += seconds

  def elapsed(self) -> dict:
    """Seconds so far, all attempts: wall-clock since the work began, and its parts."""
    out = {k: self._earlier[k] + v for k, v in self._seconds.items()}
    out["wall_s"] = self._earlier["wall_s"] + time.perf_counter() - self._started
    return out

  def window(self, step: int, steps: int, window: dict) -> None:
    """A window of the `steps` steps ending at global `step` (train_steps.jsonl, TensorBoard):
    `log_every_steps` of them, fewer at an epoch's end or after a resume inside a window, so each
    record says which steps it averages (`first_step`..`step`)."""
    window = {**window, "learning_rate": self.plan.learning_rate(step)}
    if self._writer is not None:
      self._writer.write_step({"step": step, "first_step": step - steps + 1, "steps": steps,
                               **window})
    if self._tracker is not None:
      self._tracker.log(step, window, prefix="train/")

  def record(self, record: dict) -> None:
    """An evaluation's record: history, metrics.jsonl, TensorBoard, the progress line."""
    self.history.append(record)
    if self._writer is not None:
      self._writer.write(record)
    if self._tracker is not None:
      self._tracker.log(record["step"], record)
    val = f" val_acc {record['val_accuracy']:.4f}" if "val_accuracy" in record else ""
    self.note(f"epoch {record['epoch']}: train_loss {record['train_loss']:.4f} test_loss "
              f"{record['test_loss']:.4f} test_acc {record['test_accuracy']:.4f} top5 "
              f"{record['test_top5']:.4f}{val} ({record['img_per_s']:.0f} img/s)")

  def event(self, event: dict) -> None:
    """An event (interrupted, diverged) in metrics.jsonl."""
    if self.main:
      write_event(self.run_dir, event)

  def close(self) -> None:
    if self._tracker is not None:
      tracker, self._tracker = self._tracker, None
      tracker.finish()
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def __enter__(self) -> Self:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    try:
      self.close()
    except OSError:
      if exc_type is None:
        raise
      # Already failing (e.g. a full disk, which fails this flush too): that error is the one
      # to report; the metrics written before it are on disk.
