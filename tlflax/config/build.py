"""The building blocks of a config: the blocks with their defaults (`base_config` is the seed
experiment, which the files in `configs/` start from), the `FILE:ARG` hold-out, and the configs of
a study's arms and label budgets."""

import ml_collections

from tlflax.config import keys
from tlflax.errors import UserError


def phase_config(dataset: str, epochs: int, **overrides) -> ml_collections.ConfigDict:
  """One training phase (the `source` or the `target` block): dataset, splits and schedule."""
  phase = ml_collections.ConfigDict({**keys.defaults(keys.PHASE), "dataset": dataset,
                                    "epochs": epochs})
  phase.update(overrides)
  return phase


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block: where the splits live (on the devices or streamed) and their budgets."""
  data = ml_collections.ConfigDict(keys.defaults(keys.DATA))
  data.update(overrides)
  return data


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The `model` block: the network, its width, compute dtype and convolution."""
  model = ml_collections.ConfigDict(keys.defaults(keys.MODEL))
  model.update(overrides)
  return model


def transfer_config(**overrides) -> ml_collections.ConfigDict:
  """How the target starts from the source: what is loaded, re-initialised, frozen, how fast.

  Not type-safe, so `freeze` can be a policy string or a tuple of regexes.
  """
  transfer = ml_collections.ConfigDict(keys.defaults(keys.TRANSFER), type_safe=False)
  transfer.update(overrides)
  return transfer


def base_config() -> ml_collections.ConfigDict:
  """The seed experiment: ResNet-18, CIFAR-10 source (30 epochs), CIFAR-100 target (100 epochs,
  at least 2,000 steps, so a label budget of 5 or 25 images per class still trains)."""
  top = keys.defaults(keys.TOP)
  config = ml_collections.ConfigDict()
  config.seed = top["seed"]
  config.seeds = top["seeds"]
  config.arms = arms_config(top["arms"])
  config.label_budgets = top["label_budgets"]
  config.data_dir = ml_collections.config_dict.placeholder(str)
  config.data = data_config()
  config.model = model_config()
  config.parallel = top["parallel"]
  config.source = phase_config("cifar10", epochs=30)
  config.target = phase_config("cifar100", epochs=100, min_steps=2000)
  config.transfer = transfer_config()
  config.checkpoint = ml_collections.ConfigDict(keys.defaults(keys.CHECKPOINT))
  config.log_every_steps = top["log_every_steps"]
  config.eval_every_epochs = top["eval_every_epochs"]
  config.report = ml_collections.ConfigDict(keys.defaults(keys.REPORT))
  config.evaluate = ml_collections.ConfigDict(keys.defaults(keys.EVALUATE))
  config.predict = ml_collections.ConfigDict(keys.defaults(keys.PREDICT))
  config.rank = ml_collections.ConfigDict(keys.defaults(keys.RANK))
  config.track = ml_collections.ConfigDict(keys.defaults(keys.TRACK))
  return config


def arms_config(arms: dict) -> ml_collections.ConfigDict:
  """`config.arms` from {name: {transfer key: value}}: values may change type (a freeze policy
  string or a tuple of regexes). An arm's name names its run folders: letters, digits and '-'
  (a '.' would read as nesting in `--config.arms.NAME` overrides)."""
  dotted = [name for name in arms if "." in str(name)]
  if dotted:
    raise UserError(f"config.arms has an arm named {dotted[0]!r}: a '.' in an arm's name reads "
                    "as nesting in ml_collections; use letters, digits and '-' (e.g. "
                    f"{dotted[0].replace('.', '')!r})")
  return ml_collections.ConfigDict(arms, type_safe=False)


HOLDOUT = {"train_split": "train[:90%]", "val_split": "train[90%:]"}


def holdout(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """The config-file argument (`--config=FILE:ARG`): '' keeps every training image for training,
  'val' holds out the last 10% of the source's and the target's training splits for model
  selection."""
  if arg in (None, ""):
    return config
  if arg != "val":
    raise UserError(f"unknown config argument {arg!r}: use FILE (every training image trains) "
                    "or FILE:val (10% of each training split held out for selection)")
  for phase in (config.source, config.target):
    phase.update(HOLDOUT)
  return config



def arm_names(config) -> list[str]:
  """The transfer arms of a study, in config order."""
  return list(config.arms.keys())


# Target keys an arm may not override: they decide what every experiment is compared on.
ARM_FIXED_TARGET = ("dataset", "train_split", "test_split", "val_split", "examples_per_class",
                    "image_size", "resize")


def with_arm(config, arm: str) -> ml_collections.ConfigDict:
  """A copy of `config` with the arm's overrides applied: its keys of `config.transfer`, and
  those of `config.target` under the arm's `target`."""
  out = config.copy_and_resolve_references()
  overrides = config.arms[arm]
  overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides or {})
  for key, value in overrides.items():
    if key == "target" and isinstance(value, dict):
      _override_target(out.target, arm, value)
      continue
    if key not in out.transfer:
      raise UserError(f"config.arms.{arm} overrides transfer.{key}, which does not exist: use "
                      f"keys of config.transfer ({', '.join(sorted(out.transfer.keys()))}) or "
                      "{'target': {key: value}} for config.target")
    out.transfer[key] = value
  return out


def _override_target(target, arm: str, values: dict) -> None:
  for key, value in values.items():
    where = f"config.arms.{arm}.target.{key}"
    if key not in target:
      raise UserError(f"{where} does not exist: use keys of config.target "
                      f"({', '.join(sorted(target.keys()))})")
    if key in ARM_FIXED_TARGET:
      fixed = ", ".join(ARM_FIXED_TARGET)
      raise UserError(f"{where}: an arm may not change the target's data ({fixed}), which every "
                      f"experiment is compared on: set config.target.{key} for the whole study "
                      "(label budgets: config.label_budgets)")
    try:
      target[key] = value
    except TypeError as e:
      raise UserError(f"{where}={value!r}: {e}") from None


def with_budget(config, budget: int) -> ml_collections.ConfigDict:
  """A copy of `config` trained on `budget` labelled examples per class (0: all)."""
  out = config.copy_and_resolve_references()
  out.target.examples_per_class = int(budget)
  return out


def budgets(config) -> list[int]:
  """The label budgets of a study: `label_budgets`, or the target's own examples_per_class."""
  return [int(b) for b in config.label_budgets] or [int(config.target.examples_per_class)]
