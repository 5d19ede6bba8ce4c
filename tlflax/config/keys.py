"""Every config key's default and meaning, one table per block: `--mode=config`, the unknown-key
hints, the builders (`build.py`) and docs/config.md (`reference.py`) all read them here."""

import ml_collections

# ------------------------------------------------------------------------------------------------
# Every key: its default and its meaning, one table per block. `--mode=config`, the unknown-key
# hints and docs/config.md (`python -m tlflax.config`) all come from here.
# ------------------------------------------------------------------------------------------------

TOP = {
    "seed": (0, "seed of a single run: init, data order, augmentation"),
    "seeds": ((0,), "--mode=compare: the seeds, one run folder each (pretraining uses `seed`)"),
    "arms": ({"full": {}}, ("--mode=compare: transfer arms, {name: {transfer key: value, "
             "'target': {target key: value}}} overriding config.transfer and config.target (a "
             "sweep: e.g. {'lr-1e-2': {'target': {'learning_rate': 0.01}}}), one experiment "
             "each; names of letters, digits and - (no '.': it reads as nesting)")),
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
RANK = {
    "sources": ((), ("--mode=rank: the candidate sources, each a run folder or checkpoint, a "
                     "safetensors file, hf://ORG/NAME, or 'random' (the configured model, fresh "
                     "weights: the floor); () ranks the transfer source (transfer.init_from, else "
                     "DIR/pretrain) against 'random'")),
    "holdout": (0.2, ("--mode=rank: the fraction of the scored training images the closed-form "
                      "linear probe is scored on (it is fit on the rest)")),
    "batch_size": (0, ("--mode=rank: images a feature batch, split over every device (0: "
                      "target.eval_batch_size)")),
}
REPORT = {
    "include_unfinished": (False, ("the report counts unfinished runs too, each experiment cut "
                           "to the epochs its seeds share (default: it lists them)")),
}
TRACK = {
    "wandb_project": ("", ("Weights & Biases project that every training run and the report are "
                      "sent to, from process 0 ('': no tracking; needs the track extra)")),
    "wandb_entity": ("", "wandb entity (team or user; '': wandb's default)"),
    "wandb_mode": ("", ("'online', 'offline' (everything stays on the machine, for `wandb "
                   "sync`) or 'disabled' ('': wandb's default, or WANDB_MODE)")),
    "wandb_dir": ("", "folder of wandb's local files ('': wandb's default, ./wandb or WANDB_DIR)"),
}
BLOCKS = {"": TOP, "data": DATA, "model": MODEL, "source": PHASE, "target": PHASE,
          "transfer": TRANSFER, "checkpoint": CHECKPOINT, "report": REPORT,
          "evaluate": EVALUATE, "predict": PREDICT, "rank": RANK, "track": TRACK}



def defaults(table: dict) -> dict:
  """{key: default} of a table."""
  return {k: default for k, (default, _) in table.items()}


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
