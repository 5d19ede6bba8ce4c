"""One training run, start to end: `fit`.

A run is wired from parts that each do one job: its `spec.RunSpec` (what the config says) and
`spec.Plan` (steps, epochs, when to evaluate and checkpoint), a `monitor.Recorder` (metrics,
TensorBoard, progress, time), its `io.checkpoint.RunCheckpoints`, a `data.feeds` feed (the data
on the devices or streamed) and an `epochs.Trainer` (the freeze policy in force and its compiled
steps). `fit` reads as the story of the run; `_Run` holds what happens at its turning points
(start, an epoch's steps, a stop request, divergence, a checkpoint).
"""

import dataclasses
from typing import Any, NoReturn

import jax
import numpy as np
from absl import logging

from tlflax import parallel
from tlflax.data import feeds
from tlflax.data import task as task_lib
from tlflax.errors import DIVERGED, Stopped, UserError
from tlflax.io import checkpoint
from tlflax.models import resnet
from tlflax.train import epochs, monitor, preemption, steps, tracking
from tlflax.train import spec as spec_lib


@dataclasses.dataclass
class PhaseResult:
  """What a finished run hands back: final state, its model, and the metric history."""

  state: steps.TrainState
  model: Any
  history: list[dict]
  summary: dict


def fit(spec: spec_lib.RunSpec, task: task_lib.Task, run_dir: str, *, placement=None,
        variables: dict | None = None, started: float | None = None) -> PhaseResult:
  """Trains `task` as `spec` says, evaluating, checkpointing and writing metrics to `run_dir`.

  A run folder that already holds checkpoints resumes from the newest that restores, mid-epoch
  if that is where it stopped, and ends exactly as if it had not stopped. `variables` (a transfer
  run's source merged into a fresh init) is where a run that is not resuming starts, else a
  fresh init from the seed. `placement` (default: every device, shard_map) decides where arrays
  live and how steps run; `started` (a `time.perf_counter()` reading) when the run's work began,
  for `wall_s` and `load_s`. Process 0 alone writes metrics and shows progress.

  Stops early with `errors.Stopped`: after a SIGTERM/SIGINT (`preemption`), with a checkpoint of
  the last step; or on non-finite loss or gradients, saving nothing of them.
  """
  placement = placement or parallel.Placement.create()
  plan = spec_lib.Plan.create(spec, len(task.train), placement)
  quiet = not parallel.is_main_process()
  tracker = None if quiet else tracking.for_run(spec, run_dir)
  with monitor.Recorder(run_dir, spec.mode, plan, quiet, started, tracker) as recorder, \
       checkpoint.RunCheckpoints.of_run(run_dir, spec.checkpoint) as ckpts:
    feed = feeds.make_feed(spec.data, placement, task, spec.phase.eval_batch_size,
                              recorder.note)
    run = _Run(run_dir, spec, plan, epochs.Trainer(spec, plan, task, placement, feed, recorder),
               recorder, ckpts)
    state, at = run.start(task, variables)
    for epoch in range(at.epoch, plan.epochs):
      rows = run.trainer.epoch_rows(epoch)
      state = run.trainer.ready(epoch, state, rows)
      first = at.step_in_epoch if epoch == at.epoch else 0
      state, sums, epoch_s = run.train_epoch(state, epoch, rows, first,
                                             at.sums if first else None)
      record = run.evaluate(state, epoch, sums, epoch_s, first) if plan.evaluates(epoch) else None
      if plan.checkpoints(epoch):
        run.save(state, epoch + 1, 0, steps.zero_metrics(), metrics=_selection(record))
    summary = _summary(run, task, state, at, placement)
  return PhaseResult(state, run.trainer.base_model, recorder.history, summary)


@dataclasses.dataclass
class _Position:
  """Where a run starts: how far into `epoch` (0-based) it is, the epoch's metric sums so far
  (host floats, None at its start), and what earlier attempts recorded (resumed runs only)."""

  epoch: int = 0
  step_in_epoch: int = 0
  sums: dict | None = None
  resumed: tuple[int, int, dict] | None = None  # (epoch, global step, seconds) for the recorder


@dataclasses.dataclass
class _Run:
  """The parts of one run, and what happens at its turning points."""

  run_dir: str
  spec: spec_lib.RunSpec
  plan: spec_lib.Plan
  trainer: epochs.Trainer
  recorder: monitor.Recorder
  ckpts: checkpoint.RunCheckpoints
  key: jax.Array | None = None  # the root key: init, data order, augmentation

  def start(self, task: task_lib.Task, variables: dict | None):
    """(state, `_Position`) of the run's start, in this order:
      1. the newest checkpoint of this run that restores (a resume, mid-epoch if it stopped);
      2. `variables` handed in (a transfer run's source, merged into a fresh init);
      3. a fresh init from the seed.
    A transfer run whose checkpoints all fail to restore is refused: its start is the source's,
    which the caller restores again on a rerun."""
    image_shape = task.train.images.shape[1:]
    had_checkpoints = bool(self.ckpts.all_steps())
    at = None
    if had_checkpoints:  # the restore target needs paths and shapes only: no init
      shapes = resnet.variable_shapes(self.spec.model, task.num_classes, image_shape)
      at = self._restore(shapes)
    if at is not None:
      state, at = at
      self.recorder.note(f"resuming from {self.ckpts.directory}/{at.resumed[1]} "
                         + _position_text(at.epoch, at.step_in_epoch, self.plan.steps_per_epoch))
    elif had_checkpoints and self.spec.transfer is not None:
      raise UserError(f"no checkpoint in {self.ckpts.directory} could be restored (moved to "
                      "corrupt_checkpoints/): rerun the same command to start this transfer "
                      "run over from its source")
    else:
      if variables is None:
        variables = self.trainer.placement.replicate(resnet.init_variables(
            self.spec.model, task.num_classes, image_shape, self.spec.seed))
      shapes = jax.eval_shape(lambda: variables)
      self.key = jax.random.key(self.spec.seed)
      state, at = self.trainer.begin(self.key, variables=variables), _Position()
    self.recorder.open(self.spec.hparams, at.resumed)
    _describe(self, task, shapes)
    return state, at

  def _restore(self, shapes: dict):
    """(state, `_Position`) from the newest checkpoint that restores, or None."""
    def target(done: dict):
      if (done["steps_per_epoch"], done["train_examples"]) != (self.plan.steps_per_epoch,
                                                               self.plan.train_examples):
        raise UserError(f"{self.run_dir} was checkpointed with {done['train_examples']} training "
                        f"examples in {done['steps_per_epoch']} steps/epoch, not "
                        f"{self.plan.train_examples} in {self.plan.steps_per_epoch}: use "
                        "another --workdir or restore that data config")
      epoch = _policy_epoch(done["epoch"], done.get("step_in_epoch", 0))
      return self.trainer.restore_target(self.trainer.policy_at(epoch), shapes)

    out = self.ckpts.restore_latest(target)
    if out is None:
      return None
    state, self.key, done, _ = out
    state = self.trainer.begin(self.key, state=state)
    seconds = {k: float(done.get(k, 0.0)) for k in monitor.SECONDS}
    return state, _Position(done["epoch"], done.get("step_in_epoch", 0), done.get("sums"),
                            (done["epoch"], int(state.step), seconds))

  def train_epoch(self, state, epoch: int, rows, first: int, host_sums: dict | None):
    """Steps `first`.. of `epoch`. After every step: a stop request saves and stops; a step
    checkpoint is saved when the plan says. Returns (state, host sums, training seconds)."""
    sums = epochs.epoch_sums(host_sums)  # also what the epoch ends with when no step is left in it
    epoch_steps = self.trainer.train_epoch(state, epoch, rows, first, sums)
    try:
      for new_state, new_sums, done in epoch_steps:
        state, sums, step = new_state, new_sums, epoch * self.plan.steps_per_epoch + done
        if preemption.should_stop(step):
          self.recorder.add_time("train_s", self.trainer.epoch_elapsed())
          self._stop(self.save(state, epoch, done, sums), step, epoch, done)
        if self.plan.checkpoints_within(step, done):
          self.save(state, epoch, done, sums)
    except epochs.NonFinite as e:
      self._diverged(e.step, epoch)
    epoch_s = self.trainer.epoch_elapsed()
    self.recorder.add_time("train_s", epoch_s)
    sums = jax.device_get(sums)
    self.recorder.progress.end_epoch(steps.mean_of(sums["loss"], self.plan.steps_per_epoch,
                                                   sums["skipped"]))
    return state, sums, epoch_s

  def evaluate(self, state, epoch: int, sums: dict, epoch_s: float, first: int) -> dict:
    """The record of `epoch`: its training figures, an evaluation, its speed and time."""
    spe, step = self.plan.steps_per_epoch, int(state.step)
    record = {"epoch": epoch + 1, "step": step,
              "train_loss": steps.mean_of(sums["loss"], spe, sums["skipped"]),
              "train_accuracy": steps.mean_of(sums["accuracy"], spe, sums["skipped"]),
              **self.trainer.evaluate(state),
              "learning_rate": self.plan.learning_rate(step), "epoch_s": epoch_s,
              "img_per_s": (spe - first) * self.plan.batch_size / epoch_s,
              "wall_s": self.recorder.elapsed()["wall_s"],
              **epochs.scaling_figures(self.trainer.loss_scaling, sums)}
    self.recorder.record(record)
    bad = monitor.nonfinite(record)
    if bad and parallel.is_main_process():
      logging.warning("[%s] epoch %d: non-finite %s (%s): kept in metrics.jsonl and named in "
                      "summary.json; the report leaves such values out", self.spec.mode,
                      epoch + 1, ", ".join(bad), ", ".join(str(record[k]) for k in bad))
    return record

  def save(self, state, epoch: int, done: int, sums, metrics: dict | None = None) -> str:
    """Checkpoints `state`: `epoch` (0-based) is the epoch being trained and `done` of its steps
    are done (== steps_per_epoch: trained, not yet evaluated). Never a diverged state."""
    host = jax.device_get(sums)
    if int(host["nonfinite_step"]) >= 0:
      raise epochs.NonFinite(int(host["nonfinite_step"]))
    policy = self.trainer.policy_at(_policy_epoch(epoch, done))
    self.ckpts.save(state, self.key, {
        "epoch": epoch, "step_in_epoch": done,
        "sums": {k: float(v) for k, v in host.items() if k != "nonfinite_step"},
        "steps_per_epoch": self.plan.steps_per_epoch,
        "train_examples": self.plan.train_examples, "policy": repr(policy),
        **self.recorder.elapsed()}, metrics=metrics)
    return f"{self.ckpts.directory}/{int(state.step)}"

  def _stop(self, saved: str, step: int, epoch: int, done: int) -> NoReturn:
    """After a SIGTERM/SIGINT: waits for the checkpoint of `step` and stops."""
    self.ckpts.close()
    name = preemption.signal_name()
    self.recorder.event({"event": "interrupted", "signal": name, "step": step,
                         "epoch": epoch + 1, "step_in_epoch": done})
    raise Stopped(f"interrupted by {name} after step {step} (epoch {epoch + 1}, step "
                  f"{done}/{self.plan.steps_per_epoch}); saved {saved}: rerun the same command "
                  "to resume", preemption.exit_code())

  def _diverged(self, step: int, epoch: int) -> NoReturn:
    """Non-finite loss or gradients at `step`: records the event and stops, saving nothing."""
    self.ckpts.close()  # pending saves are of earlier, finite steps
    good = self.ckpts.all_steps()
    last = f"{self.ckpts.directory}/{good[-1]}" if good else "none"
    self.recorder.event({"event": "diverged", "step": step, "epoch": epoch + 1,
                         "last_checkpoint": last})
    raise Stopped(f"diverged: non-finite loss or gradients at step {step} (epoch {epoch + 1}); "
                  f"last good checkpoint: {last}; nothing after it was saved: lower "
                  f"learning_rate (or set grad_clip_norm) and start in another --workdir, or "
                  f"move {self.run_dir} away", DIVERGED)

def _summary(run: _Run, task: task_lib.Task, state, at: _Position, placement) -> dict:
  """summary.json's figures (runner adds mode, seed and the source)."""
  history = run.recorder.history
  resumed = at.resumed or (0, 0, None)
  return {"dataset": task.name, "num_classes": task.num_classes,
          "train_examples": len(task.train), "test_examples": len(task.test),
          "val_examples": len(task.val) if task.val is not None else 0,
          "epochs": run.plan.epochs, "steps_per_epoch": run.plan.steps_per_epoch,
          "params": resnet.count_params(state.params), **placement.describe(),
          "dtype": resnet.resolve_dtype(run.spec.model.dtype),
          **run.recorder.elapsed(), "features_s": run.trainer.cache.seconds,
          "resumed_from_epoch": resumed[0], "resumed_from_step": resumed[1],
          "mean": np.asarray(task.mean).tolist(), "std": np.asarray(task.std).tolist(),
          "pipeline": run.trainer.feed.name, "class_names": list(task.class_names),
          "final": history[-1] if history else None,
          "selected_on": monitor.selection_key(history).split("_")[0],
          "nonfinite": [{"epoch": r["epoch"], "keys": monitor.nonfinite(r)} for r in history
                        if monitor.nonfinite(r)],
          "best": monitor.best_record(history)}


def _describe(run: _Run, task: task_lib.Task, shapes: dict) -> None:
  """Notes what the run trains: its data, steps, devices, parameters and compute dtype."""
  p = run.plan
  if p.epochs != p.asked_epochs:
    run.recorder.note(f"{p.train_examples} training examples make {p.steps_per_epoch} "
                       f"steps/epoch: {p.epochs} epochs instead of {p.asked_epochs}, for "
                       f"min_steps={run.spec.phase.min_steps}")
  run.recorder.note(
      f"{task.name}: {p.train_examples} train / {len(task.test)} test examples, "
      f"{task.num_classes} classes, {p.steps_per_epoch} steps/epoch of {p.batch_size} over "
      f"{run.trainer.placement.num_devices} devices, "
      f"{resnet.count_params(shapes['params']):,} params, "
      f"{resnet.resolve_dtype(run.spec.model.dtype)} compute")


def _selection(record: dict | None) -> dict | None:
  """What an epoch-end checkpoint is kept as the best by (checkpoint.py)."""
  if record is None:
    return None
  return {k: record[k] for k in ("test_accuracy", "val_accuracy") if k in record}


def _position_text(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> str:
  """Where a resumed run continues, in words (`epoch` 0-based)."""
  if step_in_epoch == 0:
    return f"at the start of epoch {epoch + 1}"
  if step_in_epoch == steps_per_epoch:
    return f"after the last step of epoch {epoch + 1}, before its evaluation"
  return f"in epoch {epoch + 1}, after {step_in_epoch} of its {steps_per_epoch} steps"


def _policy_epoch(epoch: int, step_in_epoch: int) -> int:
  """The epoch whose freeze policy shaped a checkpoint's optimizer state: a checkpoint at an
  epoch's end says (next epoch, 0) but carries the state of the epoch before."""
  return epoch if step_in_epoch > 0 else epoch - 1

