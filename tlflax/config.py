"""Config building blocks shared by the files in `configs/`, their validation, the named configs
shipped with the package, and the meaning of every key (`--mode=config`)."""

import difflib
import importlib.util
import os
import pathlib
import re

import ml_collections

from tlflax.errors import UserError, within


def phase_config(dataset: str, epochs: int, **overrides) -> ml_collections.ConfigDict:
  """One training phase (the `source` or the `target` block): dataset, splits and schedule."""
  phase = ml_collections.ConfigDict({
      "dataset": dataset,
      "train_split": "train",
      "test_split": "test",
      # held-out split for model selection (e.g. 'train[90%:]' with train_split='train[:90%]');
      # '' = none, and then every "best" is selected on the test split (the report says so)
      "val_split": "",
      "examples_per_class": 0,  # 0: every example; N: a balanced, seeded subset of N per class
      "image_size": 32,
      # how images of another size become image_size x image_size: 'squash' (resize both sides)
      # or 'center_crop' (resize the short side, then crop the middle)
      "resize": "squash",
      "download": True,  # let tfds download when the dataset is not prepared in data_dir
      "epochs": epochs,
      # at least this many training steps: a small training set (a label budget) trains for
      # more epochs, ceil(min_steps / steps_per_epoch), so 5 examples per class is not 2 steps
      "min_steps": 0,
      "batch_size": 128,
      "eval_batch_size": 1000,
      "learning_rate": 0.1,
      "weight_decay": 5e-4,
      "momentum": 0.9,
      "nesterov": True,
      "warmup_epochs": 1.0,
      "label_smoothing": 0.0,
      "grad_clip_norm": 0.0,  # 0: no clipping; else global-norm clipping of trainable gradients
      "crop_padding": 4,
      "flip": True,
  })
  phase.update(overrides)
  return phase


def transfer_config(**overrides) -> ml_collections.ConfigDict:
  """How the target starts from the source: what is loaded, re-initialised, frozen, how fast.

  Not type-safe, so `freeze` can be a policy string or a tuple of regexes.
  """
  transfer = ml_collections.ConfigDict({
      "init_from": "",  # run folder or checkpoint; '' -> DIR/pretrain, pretrained first if needed
      "reinit": ("^head/",),  # regexes of leaves that get a fresh init instead of the source's
      "freeze": "none",  # 'none' | 'backbone' | 'stages:N' | tuple of regexes
      "frozen_bn": "running",  # frozen BatchNorms: 'running' averages, or 'adapt' (batch stats)
      "lr_mult": (),  # ((regex, factor), ...): first match scales that parameter's learning rate
      "layer_decay": 1.0,  # stage k below the head trains at lr * layer_decay**k
      "unfreeze": (),  # ((epoch, policy), ...): gradual unfreezing, e.g. ((2, 'stages:3'),)
      # freeze='backbone' (frozen_bn='running'): train the head on the backbone's features,
      # computed once ('fixed', or True), once per epoch from augmented images ('augmented'),
      # or not at all ('off', or False).
      "cache_features": "fixed",
      # input statistics of a transfer run: the source run's mean/std ('source', what the
      # transferred network was trained to see) or the target's training split ('target')
      "normalize": "source",
  }, type_safe=False)
  transfer.update(overrides)
  return transfer


def base_config() -> ml_collections.ConfigDict:
  """The seed experiment: ResNet-18, CIFAR-10 source, CIFAR-100 target."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.seeds = (0,)
  # --mode=compare: scratch and every transfer arm (named overrides of config.transfer, each a
  # run folder of its own, all from one pretraining) for every seed and every label budget.
  # 'full' is the study's choice: every layer trains, from the source's weights.
  config.arms = arms_config({"full": {}})
  # examples per class of the target's training split, one study per entry (0: all of them);
  # () runs target.examples_per_class alone
  config.label_budgets = ()
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds's default
  config.data = ml_collections.ConfigDict({
      # 'auto': a split lives on the devices when it fits device_budget_gb, else it streams
      # from host memory batch by batch; 'device' or 'stream' force one path
      "pipeline": "auto",
      "device_budget_gb": 0.0,  # 0: a quarter of the smallest device's memory
      # decoded splits larger than this go to a memory-mapped file in spill_dir, not RAM
      "host_budget_gb": 0.0,  # 0: half of the memory available when the run starts
      "spill_dir": "",  # '' : the system's temporary folder
      "prefetch": 2,  # streamed batches prepared ahead of the step that uses them
  })
  # dtype 'auto': bfloat16 compute on GPU/TPU, float32 on CPU; params and BN stats stay float32.
  # conv 'auto': weight gradients as GEMMs on the CPU (conv.py), XLA's own on GPU/TPU.
  config.model = ml_collections.ConfigDict(
      {"name": "resnet18", "width": 64, "dtype": "auto", "conv": "auto"})
  config.parallel = "shard_map"  # or 'pmap' (one process): how the per-shard steps run
  config.source = phase_config("cifar10", epochs=30)
  # a label budget of 5 or 25 images per class still trains 2,000 steps (see `min_steps`)
  config.target = phase_config("cifar100", epochs=100, min_steps=2000)
  config.transfer = transfer_config()
  config.checkpoint = ml_collections.ConfigDict({
      "keep": 2,  # the latest `keep` checkpoints ...
      "keep_best": True,  # ... and the best by val_accuracy (with a val_split; else by test)
      "every_epochs": 1,
      "every_steps": 0,  # also a checkpoint every N global steps inside epochs (0: none)
      "async_save": True,
  })
  config.log_every_steps = 50
  config.eval_every_epochs = 1
  # the report counts finished runs (summary.json) only, and lists the others; True counts
  # unfinished runs too, every experiment's curves cut to the epochs its seeds share
  config.report = ml_collections.ConfigDict({"include_unfinished": False})
  return config


def arms_config(arms: dict) -> ml_collections.ConfigDict:
  """`config.arms` from {name: {transfer key: value}}: values may change type (a freeze policy
  string or a tuple of regexes)."""
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


_POSITIVE = ("epochs", "batch_size", "eval_batch_size", "image_size")
_NON_NEGATIVE = ("examples_per_class", "min_steps", "learning_rate", "weight_decay", "warmup_epochs",
                 "crop_padding")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line `UserError` for the first value no run could use."""
  from tlflax import models, parallel
  models.from_config(config.model, 2)
  parallel.check_kind(config.parallel)
  for name in ("source", "target"):
    phase = config[name]
    for key in _POSITIVE:
      if phase[key] <= 0:
        raise UserError(f"config.{name}.{key} must be positive, got {phase[key]}: "
                        f"set --config.{name}.{key}")
    for key in _NON_NEGATIVE:
      if phase[key] < 0:
        raise UserError(f"config.{name}.{key} must be >= 0, got {phase[key]}: "
                        f"set --config.{name}.{key}")
    if not 0 <= phase.momentum < 1:
      raise UserError(f"config.{name}.momentum must be in [0, 1), got {phase.momentum}")
    if not 0 <= phase.label_smoothing < 1:
      raise UserError(f"config.{name}.label_smoothing must be in [0, 1), got "
                      f"{phase.label_smoothing}")
    if phase.warmup_epochs >= phase.epochs:
      raise UserError(f"config.{name}.warmup_epochs ({phase.warmup_epochs}) must be below "
                      f"epochs ({phase.epochs}): lower warmup_epochs")
    if phase.crop_padding >= phase.image_size:
      raise UserError(f"config.{name}.crop_padding ({phase.crop_padding}) must be below "
                      f"image_size ({phase.image_size})")
    if phase.grad_clip_norm < 0:
      raise UserError(f"config.{name}.grad_clip_norm must be >= 0, got {phase.grad_clip_norm}")
    if phase.resize not in RESIZE:
      raise UserError(f"config.{name}.resize must be one of {', '.join(RESIZE)}, got "
                      f"{phase.resize!r}: set --config.{name}.resize={RESIZE[0]}")
  _validate_data(config.data)
  if config.checkpoint.keep < 1 or config.checkpoint.every_epochs < 1:
    raise UserError("config.checkpoint.keep and config.checkpoint.every_epochs must be >= 1")
  if config.checkpoint.every_steps < 0:
    raise UserError(f"config.checkpoint.every_steps must be >= 0 (0: only at epoch ends), got "
                    f"{config.checkpoint.every_steps}")
  _validate_transfer(config)
  _validate_study(config)
  if config.log_every_steps <= 0 or config.eval_every_epochs <= 0:
    raise UserError("config.log_every_steps and config.eval_every_epochs must be positive")


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


_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


def arm_names(config) -> list[str]:
  """The transfer arms of a study, in config order."""
  return list(config.arms.keys())


def with_arm(config, arm: str) -> ml_collections.ConfigDict:
  """A copy of `config` whose `transfer` block has the arm's overrides applied."""
  out = config.copy_and_resolve_references()
  overrides = config.arms[arm]
  overrides = overrides.to_dict() if hasattr(overrides, "to_dict") else dict(overrides or {})
  for key, value in overrides.items():
    if key not in out.transfer:
      raise UserError(f"config.arms.{arm} overrides transfer.{key}, which does not exist: use "
                      f"keys of config.transfer ({', '.join(sorted(out.transfer.keys()))})")
    out.transfer[key] = value
  return out


def with_budget(config, budget: int) -> ml_collections.ConfigDict:
  """A copy of `config` trained on `budget` labelled examples per class (0: all)."""
  out = config.copy_and_resolve_references()
  out.target.examples_per_class = int(budget)
  return out


def budgets(config) -> list[int]:
  """The label budgets of a study: `label_budgets`, or the target's own examples_per_class."""
  return [int(b) for b in config.label_budgets] or [int(config.target.examples_per_class)]


def _validate_study(config) -> None:
  """Arms and label budgets: names usable as folder names, overrides of existing keys, values
  that every arm's transfer block accepts."""
  if not arm_names(config):
    raise UserError("config.arms is empty: give at least one transfer arm, e.g. {'full': {}}")
  for arm in arm_names(config):
    if not _ARM_NAME.match(arm):
      raise UserError(f"config.arms has an arm named {arm!r}: use letters, digits, '.' and '-' "
                      "(it names a run folder)")
    _validate_transfer(with_arm(config, arm), arm)
  for budget in config.label_budgets:
    if not isinstance(budget, int) or budget < 0:
      raise UserError(f"config.label_budgets holds {budget!r}: use examples per class as "
                      "integers >= 0 (0: all), e.g. (5, 25, 100, 0)")
  if len(set(config.label_budgets)) != len(config.label_budgets):
    raise UserError(f"config.label_budgets {tuple(config.label_budgets)} repeats a budget")


def _validate_transfer(config, arm: str | None = None) -> None:
  """Checks the transfer block's shapes (of an arm: its errors say so); regexes are checked
  against real parameter paths later."""
  t = config.transfer
  with within(arm and f"config.arms.{arm}"):
    _check_transfer(t, config.model.name)
  if t.normalize not in ("source", "target"):
    where = f"config.arms.{arm}" if arm else "config.transfer"
    raise UserError(f"{where}.normalize must be 'source' or 'target', got {t.normalize!r}")


def _check_transfer(t, model_name: str) -> None:
  from tlflax import models, probe, transfer
  probe.check_mode(t.cache_features)
  stages = models.num_stages(model_name)
  if isinstance(t.freeze, str):
    transfer.freeze_patterns(t.freeze, stages)
  transfer.check_frozen_bn(t.frozen_bn)
  transfer.check_layer_decay(t.layer_decay)
  for entry in t.unfreeze:
    if len(entry) != 2 or not isinstance(entry[0], int) or entry[0] < 0:
      raise UserError(f"config.transfer.unfreeze entries are (epoch, policy) pairs, got {entry!r}")
    if isinstance(entry[1], str):
      transfer.freeze_patterns(entry[1], stages)
  for entry in t.lr_mult:
    if len(entry) != 2 or not isinstance(entry[1], (int, float)) or entry[1] < 0:
      raise UserError(f"config.transfer.lr_mult entries are (regex, factor >= 0) pairs, "
                      f"got {entry!r}")
  if isinstance(t.reinit, str):
    raise UserError("config.transfer.reinit is a tuple of regexes, e.g. \"('^head/',)\"")


# ------------------------------------------------------------------------------------------------
# Named configs and the meaning of every key
# ------------------------------------------------------------------------------------------------


def configs_dir() -> pathlib.Path:
  """The folder of the configs shipped with tlflax: the installed `tlflax.configs` package, or
  `configs/` next to `tlflax/` in a checkout that was not installed."""
  try:
    spec = importlib.util.find_spec("tlflax.configs")
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  return pathlib.Path(__file__).resolve().parent.parent / "configs"


def named_configs() -> list[str]:
  """Names of the shipped configs (`--config=NAME`)."""
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def config_path(value: str) -> str:
  """`--config`'s value as the file absl loads: NAME[:ARG] of a shipped config, or a path
  (FILE[:ARG]) used as given. A name that is neither says which names exist."""
  file, sep, arg = value.partition(":")
  if os.path.exists(file) or file.endswith(".py") or os.sep in file:
    return value
  path = configs_dir() / f"{file}.py"
  if not path.exists():
    names = named_configs()
    close = difflib.get_close_matches(file, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"no config named {file!r}{hint}: use one of {', '.join(names)}, or the "
                    "path of a config file")
  return f"{path}{sep}{arg}"


def named_config_argv(argv: list[str]) -> list[str]:
  """argv with a `--config=NAME[:ARG]` (or `--config NAME`) of a shipped config replaced by its
  file's path, as absl's config flag loads it (`config_path`)."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_path(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_path(out[i + 1])
  return out


_PHASE_HELP = {
    "dataset": "tfds name, 'synthetic10'/'synthetic100', or 'folder:/path' (one sub-folder a class)",
    "train_split": "split trained on: a tfds split string, e.g. 'train' or 'train[:90%]'",
    "test_split": "split the test figures come from",
    "val_split": "held-out split that selects the best epoch ('': none, select on test)",
    "examples_per_class": "a balanced, seeded subset of N training examples per class (0: all)",
    "image_size": "side in pixels that every image is resized to",
    "resize": "'squash' (both sides to image_size) or 'center_crop' (short side, then crop)",
    "download": "let tfds download and prepare the dataset when data_dir lacks it",
    "epochs": "epochs to train",
    "min_steps": "train at least this many steps (more epochs for small training sets)",
    "batch_size": "global training batch, split over every device",
    "eval_batch_size": "global evaluation batch",
    "learning_rate": "peak learning rate of the warm-up + cosine schedule",
    "weight_decay": "L2 weight decay added to the gradient (as PyTorch's SGD)",
    "momentum": "SGD momentum (0: plain SGD)",
    "nesterov": "nesterov momentum",
    "warmup_epochs": "epochs of linear warm-up from 0 to learning_rate",
    "label_smoothing": "label smoothing of the training loss",
    "grad_clip_norm": "global-norm clipping of trainable gradients (0: none)",
    "crop_padding": "random crop after zero padding by this many pixels (0: no crop)",
    "flip": "random horizontal flips",
}

KEY_HELP = {
    "seed": "seed of a single run (init, data order, augmentation)",
    "seeds": "seeds of --mode=compare, one run folder each",
    "arms": "--mode=compare: named overrides of config.transfer, one experiment each",
    "label_budgets": "--mode=compare: examples per class of the target, one study each (0: all)",
    "data_dir": "tfds data folder (None: tfds's default, ~/tensorflow_datasets)",
    "data.pipeline": "'auto' (on the devices when it fits), 'device', or 'stream' from the host",
    "data.device_budget_gb": "device memory the datasets may take (0: a quarter of it)",
    "data.host_budget_gb": "RAM a decoded split may take, else a memory-mapped file (0: half)",
    "data.spill_dir": "folder of those memory-mapped files ('': the system's temporary folder)",
    "data.prefetch": "streamed batches prepared ahead of the step that uses them",
    "model.name": "network: resnet18, resnet10, resnet34",
    "model.width": "channels of the first stage (64 is the standard ResNet)",
    "model.dtype": "compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), float32, bfloat16",
    "model.conv": "convolution weight gradients: 'auto', 'xla', or 'gemm' (CPU)",
    "parallel": "how per-shard steps run over devices: 'shard_map' or 'pmap' (one process)",
    "transfer.init_from": "run folder or checkpoint to start from ('': DIR/pretrain)",
    "transfer.reinit": "regexes of parameters re-initialised instead of loaded (the head)",
    "transfer.freeze": "'none', 'backbone', 'stages:N', or a tuple of regexes of frozen params",
    "transfer.frozen_bn": "frozen BatchNorms use 'running' averages or 'adapt' to batch stats",
    "transfer.lr_mult": "((regex, factor), ...): learning-rate factors by parameter path",
    "transfer.layer_decay": "stage k below the head trains at lr * layer_decay**k",
    "transfer.unfreeze": "((epoch, policy), ...): gradual unfreezing",
    "transfer.cache_features": "linear probe on cached features: 'fixed', 'augmented', 'off'",
    "transfer.normalize": "input statistics: the 'source' run's or the 'target' split's",
    "checkpoint.keep": "latest checkpoints kept",
    "checkpoint.keep_best": "also keep the best one (by val_accuracy, else test_accuracy)",
    "checkpoint.every_epochs": "checkpoint every N epochs",
    "checkpoint.every_steps": "also checkpoint every N steps inside epochs (0: never)",
    "checkpoint.async_save": "write checkpoints in the background",
    "log_every_steps": "progress line and TensorBoard training scalars every N steps",
    "eval_every_epochs": "evaluate every N epochs (and after the last)",
    "report.include_unfinished": "the report counts unfinished runs too (default: lists them)",
    **{f"{phase}.{key}": f"{phase}: {text}" for phase in ("source", "target")
       for key, text in _PHASE_HELP.items()},
}


def flat_keys(config) -> dict:
  """{'a.b': value} of every leaf of a config (an arm's overrides are leaves of `arms.NAME`)."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and len(value):
      for sub, leaf in flat_keys(value).items():
        out[f"{key}.{sub}"] = leaf
    else:
      out[key] = value
  return out


def key_help(key: str) -> str:
  """The one-line meaning of a flat key ('' if it has none)."""
  if key in KEY_HELP:
    return KEY_HELP[key]
  if key.startswith("arms."):
    parts = key.split(".")
    if len(parts) == 2:
      return f"arm {parts[1]}: config.transfer as it is"
    if len(parts) == 3:
      return f"arm {parts[1]}: {KEY_HELP.get('transfer.' + parts[2], 'transfer override')}"
  return ""


def describe(config) -> str:
  """Every key of `config` with its value and meaning, one a line (`--mode=config`)."""
  rows = [(key, "{}" if isinstance(value, ml_collections.ConfigDict) else repr(value))
          for key, value in flat_keys(config).items()]
  width = max(len(k) for k, _ in rows)
  vwidth = min(max(len(v) for _, v in rows), 28)
  lines = []
  for key, value in rows:
    meaning = key_help(key)
    lines.append(f"{key:<{width}}  {value:<{vwidth}}  {'# ' + meaning if meaning else ''}".rstrip())
  return "\n".join(lines)


def closest_keys(config, key: str, n: int = 3) -> list[str]:
  """The existing flat keys nearest to a misspelt `key` (by whole path, then by its last part)."""
  keys = list(flat_keys(config))
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.75)
  if len(close) < n:
    last = key.rsplit(".", 1)[-1]
    by_last = {k: k.rsplit(".", 1)[-1] for k in keys}
    for k, tail in by_last.items():
      if k not in close and difflib.SequenceMatcher(None, last, tail).ratio() >= 0.75:
        close.append(k)
  return close[:n]
