"""The values of a whole config that no run could use, each refused in one line naming the key.
What needs the model's or the optimizer's knowledge (architectures, freeze policies, the probe,
tracking) is checked one layer up, by `tlflax.train.checks`."""

import re

import ml_collections

from tlflax import parallel
from tlflax.config.build import arm_names, with_arm
from tlflax.errors import UserError, within

_POSITIVE = ("epochs", "batch_size", "eval_batch_size", "image_size", "accumulate_steps")
_NON_NEGATIVE = ("examples_per_class", "min_steps", "learning_rate", "weight_decay", "warmup_epochs",
                 "crop_padding")
WANDB_MODES = ("", "online", "offline", "disabled")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line `UserError` for the first value no run could use (the values alone:
  `tlflax.train.checks.validate` adds what the model and the optimizer know)."""
  parallel.check_kind(config.parallel)
  for name in ("source", "target"):
    _validate_phase(config[name], f"config.{name}")
  _validate_data(config.data)
  if config.evaluate.checkpoint not in ("latest", "best"):
    raise UserError(f"config.evaluate.checkpoint must be 'latest' or 'best', got "
                    f"{config.evaluate.checkpoint!r}: set --config.evaluate.checkpoint=latest")
  if config.evaluate.batch_size < 0 or config.predict.batch_size < 1 or config.predict.top_k < 1:
    raise UserError("config.evaluate.batch_size must be >= 0 (0: the run's), "
                    "config.predict.batch_size and config.predict.top_k >= 1")
  if not 0 < config.rank.holdout < 1:
    raise UserError(f"config.rank.holdout must lie strictly between 0 and 1 (got "
                    f"{config.rank.holdout}): the probe is fit on the rest, e.g. 0.2")
  if config.rank.batch_size < 0:
    raise UserError(f"config.rank.batch_size must be >= 0 (got {config.rank.batch_size}; 0: "
                    "target.eval_batch_size)")
  if isinstance(config.rank.sources, str) or any(
      not isinstance(s, str) or not s for s in config.rank.sources):
    raise UserError(f"config.rank.sources must be a tuple of paths, hf:// names or 'random', got "
                    f"{config.rank.sources!r}: e.g. --config.rank.sources=\"('random', "
                    "'runs/a/pretrain')\"")
  if config.checkpoint.keep < 1 or config.checkpoint.every_epochs < 1:
    raise UserError("config.checkpoint.keep and config.checkpoint.every_epochs must be >= 1")
  if config.checkpoint.every_steps < 0:
    raise UserError(f"config.checkpoint.every_steps must be >= 0 (0: only at epoch ends), got "
                    f"{config.checkpoint.every_steps}")
  _validate_transfer(config)
  _validate_study(config)
  if config.track.wandb_mode not in WANDB_MODES:
    raise UserError(f"config.track.wandb_mode must be '', 'online', 'offline' or 'disabled', got "
                    f"{config.track.wandb_mode!r}")
  if config.log_every_steps <= 0 or config.eval_every_epochs <= 0:
    raise UserError("config.log_every_steps and config.eval_every_epochs must be positive")

def _validate_phase(phase, where: str) -> None:
  """The values of one phase block (`where`: 'config.target', or an arm's target)."""
  for key in _POSITIVE:
    if phase[key] <= 0:
      raise UserError(f"{where}.{key} must be positive, got {phase[key]}: "
                      f"set --{where}.{key}")
  for key in _NON_NEGATIVE:
    if phase[key] < 0:
      raise UserError(f"{where}.{key} must be >= 0, got {phase[key]}: "
                      f"set --{where}.{key}")
  if not 0 <= phase.momentum < 1:
    raise UserError(f"{where}.momentum must be in [0, 1), got {phase.momentum}")
  if not 0 <= phase.label_smoothing < 1:
    raise UserError(f"{where}.label_smoothing must be in [0, 1), got "
                    f"{phase.label_smoothing}")
  if phase.warmup_epochs >= phase.epochs:
    raise UserError(f"{where}.warmup_epochs ({phase.warmup_epochs}) must be below "
                    f"epochs ({phase.epochs}): lower warmup_epochs")
  if phase.crop_padding >= phase.image_size:
    raise UserError(f"{where}.crop_padding ({phase.crop_padding}) must be below "
                    f"image_size ({phase.image_size})")
  if phase.grad_clip_norm < 0:
    raise UserError(f"{where}.grad_clip_norm must be >= 0, got {phase.grad_clip_norm}")
  if phase.resize not in RESIZE:
    raise UserError(f"{where}.resize must be one of {', '.join(RESIZE)}, got "
                    f"{phase.resize!r}: set --{where}.resize={RESIZE[0]}")


RESIZE = ("squash", "center_crop")
PIPELINES = ("auto", "device", "stream")


def _validate_data(d) -> None:
  if d.pipeline not in PIPELINES:
    raise UserError(f"config.data.pipeline must be one of {', '.join(PIPELINES)}, got "
                    f"{d.pipeline!r}: set --config.data.pipeline={PIPELINES[0]}")
  for key in ("device_budget_gb", "host_budget_gb"):
    if d[key] < 0:
      raise UserError(f"config.data.{key} must be >= 0 (0: automatic), got {d[key]}")
  if d.prefetch < 1:
    raise UserError(f"config.data.prefetch must be >= 1, got {d.prefetch}")

_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*$")


def _validate_study(config) -> None:
  """Arms and label budgets: names usable as folder names, overrides of existing keys, values
  that every arm's transfer block accepts."""
  if not arm_names(config):
    raise UserError("config.arms is empty: give at least one transfer arm, e.g. {'full': {}}")
  for arm in arm_names(config):
    if not _ARM_NAME.match(arm):
      raise UserError(f"config.arms has an arm named {arm!r}: use letters, digits and '-' "
                      "(it names a run folder)")
    armed = with_arm(config, arm)
    _validate_transfer(armed, arm)
    _validate_phase(armed.target, f"config.arms.{arm}.target")
  for budget in config.label_budgets:
    if not isinstance(budget, int) or budget < 0:
      raise UserError(f"config.label_budgets holds {budget!r}: use examples per class as "
                      "integers >= 0 (0: all), e.g. (5, 25, 100, 0)")
  if len(set(config.label_budgets)) != len(config.label_budgets):
    raise UserError(f"config.label_budgets {tuple(config.label_budgets)} repeats a budget")


def _validate_transfer(config, arm: str | None = None) -> None:
  """The transfer block's shapes (of an arm: its errors say so); freeze policies, BatchNorm
  and probe modes are checked by `tlflax.train.checks`, regexes against real parameter paths."""
  t = config.transfer
  with within(arm and f"config.arms.{arm}"):
    for entry in t.unfreeze:
      if len(entry) != 2 or not isinstance(entry[0], int) or entry[0] < 0:
        raise UserError(f"config.transfer.unfreeze entries are (epoch, policy) pairs, got "
                        f"{entry!r}")
    for entry in t.lr_mult:
      if len(entry) != 2 or not isinstance(entry[1], (int, float)) or entry[1] < 0:
        raise UserError(f"config.transfer.lr_mult entries are (regex, factor >= 0) pairs, "
                        f"got {entry!r}")
    if isinstance(t.reinit, str):
      raise UserError("config.transfer.reinit is a tuple of regexes, e.g. \"('^head/',)\"")
  if t.normalize not in ("source", "target"):
    where = f"config.arms.{arm}" if arm else "config.transfer"
    raise UserError(f"{where}.normalize must be 'source' or 'target', got {t.normalize!r}")
