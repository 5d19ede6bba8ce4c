"""Config building blocks shared by the files in `configs/`, and their validation."""

import ml_collections

from tlflax.errors import UserError


def phase_config(dataset: str, epochs: int, **overrides) -> ml_collections.ConfigDict:
  """One training phase (the `source` or the `target` block): dataset, splits and schedule."""
  phase = ml_collections.ConfigDict({
      "dataset": dataset,
      "train_split": "train",
      "test_split": "test",
      "examples_per_class": 0,  # 0: every example; N: a balanced, seeded subset of N per class
      "image_size": 32,
      "download": True,  # let tfds download when the dataset is not prepared in data_dir
      "epochs": epochs,
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
  }, type_safe=False)
  transfer.update(overrides)
  return transfer


def base_config() -> ml_collections.ConfigDict:
  """The seed experiment: ResNet-18, CIFAR-10 source, CIFAR-100 target."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.seeds = (0,)
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: tfds's default
  # dtype 'auto': bfloat16 compute on GPU/TPU, float32 on CPU; params and BN stats stay float32.
  # conv 'auto': weight gradients as GEMMs on the CPU (conv.py), XLA's own on GPU/TPU.
  config.model = ml_collections.ConfigDict(
      {"name": "resnet18", "width": 64, "dtype": "auto", "conv": "auto"})
  config.parallel = "shard_map"  # or 'pmap' (one process): how the per-shard steps run
  config.source = phase_config("cifar10", epochs=30)
  config.target = phase_config("cifar100", epochs=100)
  config.transfer = transfer_config()
  config.checkpoint = ml_collections.ConfigDict({
      "keep": 2,  # the latest `keep` checkpoints ...
      "keep_best": True,  # ... and the best by test accuracy
      "every_epochs": 1,
      "every_steps": 0,  # also a checkpoint every N global steps inside epochs (0: none)
      "async_save": True,
  })
  config.log_every_steps = 50
  config.eval_every_epochs = 1
  return config


_POSITIVE = ("epochs", "batch_size", "eval_batch_size", "image_size")
_NON_NEGATIVE = ("examples_per_class", "learning_rate", "weight_decay", "warmup_epochs",
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
  if config.checkpoint.keep < 1 or config.checkpoint.every_epochs < 1:
    raise UserError("config.checkpoint.keep and config.checkpoint.every_epochs must be >= 1")
  if config.checkpoint.every_steps < 0:
    raise UserError(f"config.checkpoint.every_steps must be >= 0 (0: only at epoch ends), got "
                    f"{config.checkpoint.every_steps}")
  _validate_transfer(config)
  if config.log_every_steps <= 0 or config.eval_every_epochs <= 0:
    raise UserError("config.log_every_steps and config.eval_every_epochs must be positive")


def _validate_transfer(config) -> None:
  """Checks the transfer block's shapes; regexes are checked against real parameter paths later."""
  from tlflax import models, probe, transfer
  t = config.transfer
  probe.check_mode(t.cache_features)
  stages = models.num_stages(config.model.name)
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
