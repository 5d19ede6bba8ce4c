"""What one training run is (`RunSpec`, from the mode and the config, built once) and how it
unfolds in steps and epochs (`Plan`: the one answer to "is it time to evaluate / checkpoint /
log?", in the spirit of big_vision's `u.itstime`)."""

import dataclasses

import optax

from tlflax.errors import require
from tlflax.io import rundir
from tlflax.train import optim

PHASES = {"pretrain": "source", "scratch": "target", "transfer": "target"}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything a run reads from the config: its phase (`source` or `target` block), model,
  transfer block (transfer runs only), seed, checkpoint and data blocks, and how often it logs and
  evaluates. Built once by `create`; nothing downstream reads the config again."""

  mode: str  # 'pretrain' | 'scratch' | 'transfer'
  phase: object  # config.source or config.target
  model: object
  transfer: object | None  # config.transfer for a transfer run, else None
  seed: int
  checkpoint: object
  data: object
  log_every_steps: int
  eval_every_epochs: int
  hparams: dict  # the config keys that decide the run's result (TensorBoard's HParams)
  track: object = None  # config.track: experiment tracking

  @classmethod
  def create(cls, mode: str, config) -> "RunSpec":
    return cls(mode=mode, phase=config[PHASES[mode]], model=config.model,
               transfer=config.transfer if mode == "transfer" else None, seed=config.seed,
               checkpoint=config.checkpoint, data=config.data,
               log_every_steps=config.log_every_steps, eval_every_epochs=config.eval_every_epochs,
               hparams=rundir.hparams(mode, config), track=config.get("track"))


@dataclasses.dataclass(frozen=True)
class Plan:
  """A run's steps and epochs over its training split: `epochs` raised so that it trains at least
  `min_steps` steps, the learning-rate schedule over them, and when it evaluates, checkpoints and
  logs. Epochs are 0-based here (the epoch being trained); records count from 1."""

  train_examples: int
  batch_size: int
  steps_per_epoch: int
  epochs: int
  asked_epochs: int  # phase.epochs, before min_steps
  schedule: optax.Schedule
  eval_every: int
  checkpoint_every: int
  checkpoint_every_steps: int
  log_every: int
  accumulate_steps: int

  @classmethod
  def create(cls, spec: RunSpec, train_examples: int, placement) -> "Plan":
    phase, batch = spec.phase, spec.phase.batch_size
    require(batch <= train_examples,
            f"batch_size {batch} exceeds the {train_examples} training examples of "
            f"{phase.dataset}: lower batch_size or widen train_split")
    placement.check_batch(batch, "batch_size")
    steps = train_examples // batch
    epochs = max(phase.epochs, -(-phase.min_steps // steps))
    return cls(train_examples, batch, steps, epochs, phase.epochs,
               optim.learning_rate_schedule(phase, epochs, steps), spec.eval_every_epochs,
               spec.checkpoint.every_epochs, spec.checkpoint.every_steps,
               max(1, spec.log_every_steps), phase.accumulate_steps)

  def last(self, epoch: int) -> bool:
    return epoch + 1 == self.epochs

  def evaluates(self, epoch: int) -> bool:
    """Whether `epoch` ends with an evaluation (every `eval_every` epochs, and the last)."""
    return (epoch + 1) % self.eval_every == 0 or self.last(epoch)

  def checkpoints(self, epoch: int) -> bool:
    """Whether `epoch` ends with a checkpoint (every `checkpoint_every` epochs, and the last)."""
    return (epoch + 1) % self.checkpoint_every == 0 or self.last(epoch)

  def checkpoints_within(self, step: int, done: int) -> bool:
    """Whether global `step` (the `done`-th of its epoch) is checkpointed inside its epoch."""
    return bool(self.checkpoint_every_steps) and step % self.checkpoint_every_steps == 0 \
        and done < self.steps_per_epoch

  def logs(self, done: int) -> bool:
    """Whether the host reads the step metrics after the `done`-th step of an epoch."""
    return done % self.log_every == 0 or done == self.steps_per_epoch

  def learning_rate(self, step: int) -> float:
    """The learning rate global step `step` (1-based: after it) trained with (with gradient
    accumulation, that of the update the step belongs to)."""
    return float(self.schedule((step - 1) // self.accumulate_steps))
