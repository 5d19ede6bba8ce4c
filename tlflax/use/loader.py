"""`tlflax.load`: a trained model, ready to apply, from wherever its weights are.

    model, variables, info = tlflax.load(PATH)
    logits = model.apply(variables, images, train=False)

PATH is a tlflax run folder (its latest checkpoint), one of its checkpoints
(`RUN/checkpoints/STEP`), a safetensors file in torchvision / timm layout, or hf://ORG/NAME.
`images` are float32 NHWC, already resized to `info['image_size']` and normalised as
(x / 255 - info['mean']) / info['std'].
"""

import json
import os

import jax
import jax.numpy as jnp

from tlflax.errors import UserError
from tlflax.io import checkpoint, rundir, storage
from tlflax.models import resnet, weights


def load(path: str, what: str = "tlflax.load"):
  """(model, variables, info) of the weights `path` names (see the module docstring). `info`:
  model name and width, num_classes, image_size, mean, std, class_names, and where the weights
  came from. `what` names where `path` came from (a flag, e.g. '--model') in errors."""
  if weights.is_weights(path):
    return _from_weights(path, what)
  return _from_run(path, what)


def _from_weights(path: str, what: str):
  w = weights.read(path, what)
  arch, meta = w.arch, w.metadata
  model = resnet.create_model(arch.name, arch.num_classes, arch.width)
  variables = jax.tree.map(jnp.asarray, weights.variables(w))
  image_size = weights.image_size(arch, meta, w.file)
  info = {"model": arch.name, "width": arch.width, "num_classes": arch.num_classes,
          "image_size": image_size, "mean": list(w.mean), "std": list(w.std),
          "class_names": json.loads(meta.get("class_names", "[]")), "source": path,
          "file": w.file, "sha256": w.sha256, "run": None, "config": None}
  return model, variables, info


def _from_run(path: str, what: str):
  directory, _ = checkpoint.locate(path, what)
  run_dir = os.path.dirname(directory)
  config = rundir.read_json(os.path.join(run_dir, "config.json"))
  if config is None:
    raise UserError(f"{path} is a checkpoint outside a tlflax run folder (no config.json beside "
                    "its checkpoints/): pass the run folder or one of its checkpoints")
  restored, name = checkpoint.restore_variables(path, what=what)
  num_classes = int(restored["params"]["head"]["kernel"].shape[-1])
  m = config["model"]
  model = resnet.create_model(m["name"], num_classes, m["width"], m["dtype"], m["conv"],
                              m.get("padding", "same"))  # runs from before the key: 'same'
  phase = trained_phase(config)
  stats = rundir.read_json(os.path.join(run_dir, rundir.STATS_FILE)) or {}
  summary = rundir.read_json(os.path.join(run_dir, "summary.json")) or {}
  info = {"model": m["name"], "width": m["width"], "num_classes": num_classes,
          "image_size": phase["image_size"], "mean": stats.get("mean"), "std": stats.get("std"),
          "class_names": summary.get("class_names", []), "source": path, "checkpoint": name,
          "padding": model.padding, "run": run_dir, "config": config}
  return model, restored, info


def trained_phase(config: dict | None) -> dict:
  """The phase block of a run's config.json that trained its model: `source` for a pretraining,
  else `target` ({} for weights from outside a run)."""
  if not config:
    return {}
  return config["source" if config["mode"] == "pretrain" else "target"]


def class_names(info: dict) -> list[str]:
  """The model's class names, or its class indices as names where none were recorded."""
  return list(info["class_names"]) or [str(i) for i in range(info["num_classes"])]


def model_name(model_path: str, suffix: str = "") -> str:
  """A short name of the model `model_path` names, for output folders: a study's seed folder
  with its experiment (`transfer_full_seed_0`), a checkpoint with its step (`scratch_step96`),
  else the path's last part; `suffix` is appended to that last part first (the checkpoint a run
  folder was read at)."""
  parts = os.path.normpath(model_path.replace(weights.HUB_PREFIX, "")).split(os.sep)
  if parts[-1].isdigit() and len(parts) > 2 and parts[-2] == "checkpoints":
    parts = parts[:-2] + [f"{parts[-3]}_step{parts[-1]}"]
  else:
    parts[-1] += suffix
  return "_".join(parts[-2:]) if parts[-1].startswith("seed_") else parts[-1] or "model"


def checkpoint_path(path: str, which: str) -> str:
  """What `load` should read for `which` ('latest' or 'best') of `path`: a run folder's best
  checkpoint (the best epoch of its summary.json, kept by `checkpoint.keep_best`), else `path`
  (a checkpoint folder names its own step; files and hub models have one set of weights)."""
  if which == "latest" or weights.is_weights(path) or os.path.basename(path).isdigit():
    return path
  if which != "best":
    raise UserError(f"config.evaluate.checkpoint must be 'latest' or 'best', got {which!r}")
  summary = rundir.read_json(os.path.join(path, "summary.json")) or {}
  best = summary.get("best")
  if not best:
    raise UserError(f"{path} has no finished summary.json naming its best epoch: evaluate its "
                    "latest checkpoint, or a checkpoint folder")
  step_dir = os.path.join(path, "checkpoints", str(best["step"]))
  if not storage.isdir(step_dir):
    raise UserError(f"the best checkpoint of {path} (step {best['step']}) is not kept "
                    "(checkpoint.keep_best was off): evaluate the latest one")
  return step_dir
