"""Every config key's default and meaning (one table per block), the building blocks the files in
`configs/` use, and the validation of a whole config. `python -m tlflax.config` prints the
reference that docs/config.md holds."""

import re

import ml_collections

from tlflax.errors import UserError, within

# ------------------------------------------------------------------------------------------------
# Every key: its default and its meaning, one table per block. `--mode=config`, the unknown-key
# hints and docs/config.md (`python -m tlflax.config`) all come from here.
# ------------------------------------------------------------------------------------------------

TOP = {
    "seed": (0, "seed of a single run: init, data order, augmentation"),
    "seeds": ((0,), "--mode=compare: the seeds, one run folder each (pretraining uses `seed`)"),
    "arms": ({"full": {}}, ("--mode=compare: transfer arms, {name: {transfer key: value, "
             "'target': {target key: value}}} overriding config.transfer and config.target (a "
             "sweep: e.g. {'lr-0.01': {'target': {'learning_rate': 0.01}}}), one experiment "
             "each; names of letters, digits, . and -")),
    "label_budgets": ((), ("--mode=compare: examples per class of the target's training split, "
                      "one set of runs each (0: all), e.g. (5, 25, 100, 0); (): "
                      "target.examples_per_class alone")),
    "data_dir": (None, "tfds data folder (None: tfds's default, ~/tensorflow_datasets)"),
    "parallel": ("shard_map", ("how the per-shard steps run over the devices: 'shard_map' or "
                 "'pmap' (one process only)")),
    "log_every_steps": (50, "progress line and TensorBoard training scalars every N steps"),
    "eval_every_epochs": (1, ("evaluate every N epochs and after the last (the report's claims "
                          "need 1)")),
}
DATA = {
    "pipeline": ("auto", ("'auto': the splits live on the devices when they fit "
                 "device_budget_gb, else they stream from host memory; 'device' or 'stream' "
                 "force one")),
    "device_budget_gb": (0.0, ("device memory the splits may take on the device path (0: a "
                         "quarter of the smallest device's memory; CPU: of the host's, shared)")),
    "host_budget_gb": (0.0, ("RAM a decoded split may take, else it goes to a memory-mapped file "
                       "(0: half of the memory available at the start)")),
    "spill_dir": ("", ("folder of those memory-mapped files, unlinked at once ('': the system's "
                  "temporary folder)")),
    "prefetch": (2, "streamed batches prepared ahead of the step that uses them"),
}
MODEL = {
    "name": ("resnet18", ("network: resnet18, resnet34, resnet10 (one block a stage: quick CPU "
             "runs), or torchvision's ImageNet ResNets resnet18_imagenet, resnet34_imagenet, "
             "resnet50_imagenet, resnet101_imagenet")),
    "width": (64, "channels of the first stage (64 in the standard ResNet); stages double it"),
    "dtype": ("auto", ("compute dtype: 'auto' (bfloat16 on GPU/TPU, float32 on CPU), float32, "
              "bfloat16, or float16 (GPUs without fast bfloat16: T4, V100) with dynamic loss "
              "scaling; params, BN statistics, loss and optimizer state stay float32")),
    "conv": ("auto", ("convolution weight gradients: 'auto' (GEMMs on the CPU, XLA's own on "
             "GPU/TPU), 'xla' or 'gemm'")),
    "padding": ("torch", ("how convolutions pad: 'torch' (k // 2 on every side, as PyTorch: what "
                "imported and exported weights need) or 'same' (XLA's SAME, (0, 1) for stride-2 "
                "3x3 convolutions on even sizes: what run folders made before 'torch' used)")),
}
PHASE = {
    "dataset": (None, ("tfds name, 'synthetic10'/'synthetic100', or 'folder:/path' (one "
                "sub-folder a class)")),
    "train_split": ("train", "split trained on: a split string, e.g. 'train' or 'train[:90%]'"),
    "test_split": ("test", "split the test figures come from"),
    "val_split": ("", ("held-out split that selects the best epoch, e.g. 'train[90%:]' with "
                  "train_split='train[:90%]': evaluated every epoch beside the test split, it "
                  "chooses the best checkpoint and the report's best ('': none; then every best is "
                  "selected on test, and the report says so)")),
    "examples_per_class": (0, ("a balanced, seeded subset of N training examples per class (0: "
                           "all)")),
    "image_size": (32, "side in pixels that every image is resized to"),
    "resize": ("squash", ("'squash' (both sides to image_size) or 'center_crop' (the short side, "
               "then the middle)")),
    "download": (True, "let tfds download and prepare the dataset when data_dir lacks it"),
    "epochs": (None, "epochs to train"),
    "min_steps": (0, ("train at least this many steps: ceil(min_steps / steps_per_epoch) epochs "
                  "for small training sets")),
    "batch_size": (128, ("global training batch of a step, split over every device (it must "
                   "divide by their number)")),
    "accumulate_steps": (1, ("gradient accumulation (optax.MultiSteps): an update averages the "
                         "gradients of this many steps, an effective batch of batch_size * "
                         "accumulate_steps; steps, min_steps and checkpoint.every_steps count "
                         "batches, the schedule counts updates; BatchNorm in training normalises "
                         "each batch with its own statistics")),
    "eval_batch_size": (1000, ("global evaluation batch (rounded up to a multiple of the devices; "
                        "the last batch is padded and masked)")),
    "learning_rate": (0.1, "peak learning rate of the warm-up + cosine schedule"),
    "weight_decay": (5e-4, "L2 weight decay added to the gradient (as PyTorch's SGD)"),
    "momentum": (0.9, "SGD momentum (0: plain SGD)"),
    "nesterov": (True, "nesterov momentum"),
    "warmup_epochs": (1.0, "epochs of linear warm-up from 0 to learning_rate"),
    "label_smoothing": (0.0, "label smoothing of the training loss"),
    "grad_clip_norm": (0.0, "global-norm clipping of trainable gradients (0: none)"),
    "crop_padding": (4, "random crop after zero padding by this many pixels (0: no crop)"),
    "flip": (True, "random horizontal flips"),
}
TRANSFER = {
    "init_from": ("", ("where to start from: a run folder (its latest checkpoint; it must have "
                  "finished), a checkpoints/ folder, or one checkpoints/<step>/ folder ('': "
                  "DIR/pretrain, pretrained first if needed)")),
    "reinit": (("^head/",), "regexes of parameters re-initialised instead of loaded (the head)"),
    "freeze": ("none", ("'none', 'backbone', 'stages:N', or a tuple of regexes of frozen "
               "parameters")),
    "frozen_bn": ("running", ("frozen BatchNorms normalise with their running averages and keep "
                  "them ('running'), or use and update batch statistics ('adapt')")),
    "lr_mult": ((), ("((regex, factor), ...): the first match scales a parameter's learning "
                "rate")),
    "layer_decay": (1.0, ("stage k below the head trains at lr * layer_decay**k (head k=0, stem "
                    "k=N+1)")),
    "unfreeze": ((), ("((epoch, policy), ...): gradual unfreezing, e.g. ((2, 'stages:3'),); freeze "
                 "holds until the first entry")),
    "cache_features": ("fixed", ("freeze='backbone' (frozen_bn='running'): the head trains on "
                       "features computed once ('fixed', or True), per epoch from augmented "
                       "images ('augmented'), or not cached ('off', or False)")),
    "normalize": ("source", ("input statistics of a transfer run: the 'source' run's mean/std "
                  "(read from its data_stats.json: what the network was trained to see) or the "
                  "'target' training split's")),
}
CHECKPOINT = {
    "keep": (2, "latest checkpoints kept"),
    "keep_best": (True, ("also keep the best one (by val_accuracy with a val_split, else "
                  "test_accuracy)")),
    "every_epochs": (1, "checkpoint every N epochs (and after the last)"),
    "every_steps": (0, "also checkpoint every N global steps inside epochs (0: never)"),
    "async_save": (True, "write checkpoints in the background"),
}
EVALUATE = {
    "dataset": ("", ("--mode=evaluate: dataset to evaluate on ('': the run's target dataset); a "
                "tfds name, synthetic10/synthetic100 or folder:/path")),
    "split": ("", "--mode=evaluate: split to evaluate ('': the run's test split)"),
    "checkpoint": ("latest", ("--mode=evaluate: a run folder's 'latest' or 'best' checkpoint "
                   "(--model=RUN/checkpoints/STEP names any)")),
    "batch_size": (0, "--mode=evaluate: evaluation batch (0: the run's eval_batch_size)"),
}
PREDICT = {
    "top_k": (5, "--mode=predict: classes and probabilities per image in predictions.csv"),
    "batch_size": (64, "--mode=predict: images a batch, split over every device"),
}
REPORT = {
    "include_unfinished": (False, ("the report counts unfinished runs too, each experiment cut "
                           "to the epochs its seeds share (default: it lists them)")),
}
TRACK = {
    "wandb_project": ("", ("Weights & Biases project that every training run and the report are "
                      "sent to, from process 0 ('': no tracking; needs tlflax[track])")),
    "wandb_entity": ("", "wandb entity (team or user; '': wandb's default)"),
    "wandb_mode": ("", ("'online', 'offline' (everything stays on the machine, for `wandb "
                   "sync`) or 'disabled' ('': wandb's default, or WANDB_MODE)")),
    "wandb_dir": ("", "folder of wandb's local files ('': wandb's default, ./wandb or WANDB_DIR)"),
}
BLOCKS = {"": TOP, "data": DATA, "model": MODEL, "source": PHASE, "target": PHASE,
          "transfer": TRANSFER, "checkpoint": CHECKPOINT, "report": REPORT,
          "evaluate": EVALUATE, "predict": PREDICT, "track": TRACK}


def _defaults(table: dict) -> dict:
  return {k: default for k, (default, _) in table.items()}


def phase_config(dataset: str, epochs: int, **overrides) -> ml_collections.ConfigDict:
  """One training phase (the `source` or the `target` block): dataset, splits and schedule."""
  phase = ml_collections.ConfigDict({**_defaults(PHASE), "dataset": dataset, "epochs": epochs})
  phase.update(overrides)
  return phase


def data_config(**overrides) -> ml_collections.ConfigDict:
  """The `data` block: where the splits live (on the devices or streamed) and their budgets."""
  data = ml_collections.ConfigDict(_defaults(DATA))
  data.update(overrides)
  return data


def model_config(**overrides) -> ml_collections.ConfigDict:
  """The `model` block: the network, its width, compute dtype and convolution."""
  model = ml_collections.ConfigDict(_defaults(MODEL))
  model.update(overrides)
  return model


def transfer_config(**overrides) -> ml_collections.ConfigDict:
  """How the target starts from the source: what is loaded, re-initialised, frozen, how fast.

  Not type-safe, so `freeze` can be a policy string or a tuple of regexes.
  """
  transfer = ml_collections.ConfigDict(_defaults(TRANSFER), type_safe=False)
  transfer.update(overrides)
  return transfer


def base_config() -> ml_collections.ConfigDict:
  """The seed experiment: ResNet-18, CIFAR-10 source (30 epochs), CIFAR-100 target (100 epochs,
  at least 2,000 steps, so a label budget of 5 or 25 images per class still trains)."""
  top = _defaults(TOP)
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
  config.checkpoint = ml_collections.ConfigDict(_defaults(CHECKPOINT))
  config.log_every_steps = top["log_every_steps"]
  config.eval_every_epochs = top["eval_every_epochs"]
  config.report = ml_collections.ConfigDict(_defaults(REPORT))
  config.evaluate = ml_collections.ConfigDict(_defaults(EVALUATE))
  config.predict = ml_collections.ConfigDict(_defaults(PREDICT))
  config.track = ml_collections.ConfigDict(_defaults(TRACK))
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


_POSITIVE = ("epochs", "batch_size", "eval_batch_size", "image_size", "accumulate_steps")
_NON_NEGATIVE = ("examples_per_class", "min_steps", "learning_rate", "weight_decay", "warmup_epochs",
                 "crop_padding")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises a one-line `UserError` for the first value no run could use."""
  from tlflax.models import resnet
  from tlflax import parallel
  resnet.from_config(config.model, 2)
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
  if config.checkpoint.keep < 1 or config.checkpoint.every_epochs < 1:
    raise UserError("config.checkpoint.keep and config.checkpoint.every_epochs must be >= 1")
  if config.checkpoint.every_steps < 0:
    raise UserError(f"config.checkpoint.every_steps must be >= 0 (0: only at epoch ends), got "
                    f"{config.checkpoint.every_steps}")
  _validate_transfer(config)
  _validate_study(config)
  if config.track.wandb_mode not in ("", "online", "offline", "disabled"):
    raise UserError(f"config.track.wandb_mode must be '', 'online', 'offline' or 'disabled', got "
                    f"{config.track.wandb_mode!r}")
  from tlflax.train import tracking
  tracking.check(config.track)
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


_ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]*$")


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


def _validate_study(config) -> None:
  """Arms and label budgets: names usable as folder names, overrides of existing keys, values
  that every arm's transfer block accepts."""
  if not arm_names(config):
    raise UserError("config.arms is empty: give at least one transfer arm, e.g. {'full': {}}")
  for arm in arm_names(config):
    if not _ARM_NAME.match(arm):
      raise UserError(f"config.arms has an arm named {arm!r}: use letters, digits, '.' and '-' "
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
  """Checks the transfer block's shapes (of an arm: its errors say so); regexes are checked
  against real parameter paths later."""
  t = config.transfer
  with within(arm and f"config.arms.{arm}"):
    _check_transfer(t, config.model.name)
  if t.normalize not in ("source", "target"):
    where = f"config.arms.{arm}" if arm else "config.transfer"
    raise UserError(f"{where}.normalize must be 'source' or 'target', got {t.normalize!r}")


def _check_transfer(t, model_name: str) -> None:
  from tlflax.models import resnet
  from tlflax.train import probe
  from tlflax.train import transfer
  probe.check_mode(t.cache_features)
  stages = resnet.num_stages(model_name)
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
# Meanings
# ------------------------------------------------------------------------------------------------


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
  block, _, leaf = key.rpartition(".")
  if block == "arms" or key.startswith("arms."):
    parts = key.split(".")
    if len(parts) == 2:
      return f"arm {parts[1]}: config.transfer as it is"
    if parts[2] == "target" and len(parts) == 4:
      return f"arm {parts[1]}: {key_help('target.' + parts[3]) or 'target override'}"
    return f"arm {parts[1]}: {key_help('transfer.' + parts[2]) or 'transfer override'}"
  table = BLOCKS.get(block)
  if table is None or leaf not in table:
    return ""
  meaning = table[leaf][1]
  return f"{block}: {meaning}" if block in ("source", "target") else meaning


def reference_markdown() -> str:
  """docs/config.md: every key of `base_config()` with its default and meaning."""
  lines = ["# Config reference", "",
           ("Generated from `tlflax/config.py` by `python -m tlflax.config > docs/config.md` (a "
           "test fails when this file is stale). Defaults are those of `base_config()`, the "
           "seed experiment; the shipped configs in `configs/` change some of them. Override any "
           "key with `--config.KEY=VALUE`; `--mode=config` prints the resolved values."), ""]
  titles = {"": "Top level", "data": "`data`: where the splits live",
            "model": "`model`", "source": "`source`: the pretraining phase",
            "target": "`target`: the transfer (and scratch) phase",
            "transfer": "`transfer`: how the target starts from the source",
            "checkpoint": "`checkpoint`", "report": "`report`",
            "evaluate": "`evaluate`: --mode=evaluate", "predict": "`predict`: --mode=predict",
            "track": "`track`: experiment tracking (Weights & Biases)"}
  base = base_config()
  flat = flat_keys(base)
  for block, title in titles.items():
    lines += [f"## {title}", "", "| key | default | meaning |", "| --- | --- | --- |"]
    for leaf, (_, meaning) in BLOCKS[block].items():
      key = f"{block}.{leaf}" if block else leaf
      default = base.arms.to_dict() if key == "arms" else flat.get(key)
      cells = (repr(default), meaning)
      shown, text = (c.replace("|", "\\|") for c in cells)
      lines.append(f"| `{key}` | `{shown}` | {text} |")
    lines.append("")
  return "\n".join(lines)


if __name__ == "__main__":
  print(reference_markdown(), end="")
