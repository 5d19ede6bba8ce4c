"""`--mode=evaluate --model=PATH`: a trained model on any split of any dataset tlflax reads, with
per-class figures.

PATH is whatever `tlflax.load` takes. A run folder is evaluated at its `latest` or `best`
checkpoint (`evaluate.checkpoint`), on its target's test split unless `evaluate.dataset` /
`evaluate.split` say otherwise, at its image size, with its input statistics and evaluation
batch. Loss, top-1 and top-5 come from the very eval step and padding the training ran, on every
device, so on the same split they equal the run's last evaluation exactly. A second pass counts
the confusion matrix, from which the per-class accuracy (recall), precision and F1 follow.

Writes DIR/evaluate/<name>/: evaluation.json, evaluation.md (the figures, the per-class table and
the 20 most confused pairs) and confusion.png (row-normalised, class names on the axes).

Per-class figures are computed from the confusion matrix in numpy (a few lines) rather than with
scikit-learn: the matrix is already summed on the devices, and scikit-learn would need every
prediction gathered on the host and a dependency for three divisions.
"""

import functools
import json
import os
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from tlflax import config as config_lib
from tlflax import parallel
from tlflax.data import batches, feeds
from tlflax.data import task as task_lib
from tlflax.errors import SplitError, UserError, within
from tlflax.io import figures, storage
from tlflax.train import evaluation, steps
from tlflax.use import loader


def _confusion(variables, data, rows, index, *, model, num_classes: int, axis_name=None):
  """Per shard: the (true, predicted) counts of evaluation batch `index`, summed over shards."""
  batch = batches.shard_eval_batch(data, rows[index])
  predicted = jnp.argmax(model.apply(variables, batch["image"], train=False), -1)
  labels = jnp.where(batch["mask"], batch["label"], 0)
  counts = jnp.zeros((num_classes, num_classes), jnp.int32).at[labels, predicted].add(
      batch["mask"].astype(jnp.int32))
  return {"confusion": steps.sum_over(counts, axis_name)}


def phase_of(info: dict, evaluate_cfg, model_path: str):
  """The phase config the evaluation reads: the run's (target, or source for a pretraining) with
  `evaluate.dataset` / `split` applied; weights from outside a run need both named."""
  config = info["config"]
  if config is None:
    if not (evaluate_cfg.dataset and evaluate_cfg.split):
      raise UserError(f"{model_path} is not a tlflax run, so there is no split to default to: "
                      "set --config.evaluate.dataset and --config.evaluate.split")
    phase = config_lib.phase_config(evaluate_cfg.dataset, 1, image_size=info["image_size"],
                                    resize="center_crop", eval_batch_size=500)
  else:
    phase = ml_collections.ConfigDict(loader.trained_phase(config))
  phase.dataset = evaluate_cfg.dataset or phase.dataset
  phase.test_split = evaluate_cfg.split or phase.test_split
  if evaluate_cfg.batch_size:
    phase.eval_batch_size = evaluate_cfg.batch_size
  return phase


def evaluate(model_path: str, config, workdir: str, placement=None) -> str:
  """Evaluates the model `model_path` names as `config.evaluate` says; returns the folder of its
  outputs."""
  placement = placement or parallel.Placement.create(config.parallel)
  path = loader.checkpoint_path(model_path, config.evaluate.checkpoint)
  model, variables, info = loader.load(path, "--model")
  phase = phase_of(info, config.evaluate, model_path)
  data_dir = (info["config"] or {}).get("data_dir") or config.data_dir
  with within("config.evaluate.split", only=SplitError):
    loaded = task_lib.load_split(phase, phase.test_split, data_dir, config.data)
  if loaded.num_classes != info["num_classes"]:
    raise UserError(f"{phase.dataset} has {loaded.num_classes} classes, the model "
                    f"{info['num_classes']}: evaluate it on a dataset with its classes")
  split = task_lib.Split(loaded.images, loaded.labels)
  mean, std = (np.asarray(info[k], np.float32) for k in ("mean", "std"))
  task = task_lib.Task(phase.dataset, split, split, loaded.num_classes, mean, std)
  eval_data, eval_rows, parts = feeds.place_eval(placement, task, phase.eval_batch_size)
  variables = placement.replicate(jax.device_get(variables))
  state = steps.TrainState(jnp.zeros((), jnp.int32), variables["params"],
                           variables["batch_stats"], None)

  def batches(lo, hi):
    return ((eval_data, eval_rows, i) for i in range(lo, hi))

  eval_fn = placement.spmd(functools.partial(steps.eval_step_on_data, model=model), 4,
                           split=(2,))
  figures = evaluation.evaluate(eval_fn, state, parts, batches)
  confusion_fn = placement.spmd(functools.partial(_confusion, model=model,
                                                  num_classes=loaded.num_classes), 4, split=(2,))
  confusion = evaluation.evaluate_sums(confusion_fn, state, parts["test"], batches)["confusion"]
  names = list(loaded.class_names) or loader.class_names(info)  # the same number of classes
  result = {"model": model_path, "checkpoint": info.get("checkpoint") or info.get("file"),
            "dataset": phase.dataset, "split": phase.test_split, "image_size": phase.image_size,
            "mean": mean.tolist(), "std": std.tolist(), "eval_batch_size": phase.eval_batch_size,
            "count": figures["test_count"], "loss": figures["test_loss"],
            "accuracy": figures["test_accuracy"], "top5": figures["test_top5"],
            **per_class(np.asarray(confusion, np.int64), names)}
  out = os.path.join(workdir, "evaluate", _name(model_path, phase, info.get("checkpoint"),
                                                config.evaluate.checkpoint))
  if parallel.is_main_process():
    write(out, result)
  parallel.sync(f"evaluated {out}")
  return out


def per_class(confusion: np.ndarray, names: list[str]) -> dict:
  """Per-class count, accuracy (= recall), precision and F1, their macro means, and the matrix
  (rows: true class, columns: predicted)."""
  true, predicted, hits = confusion.sum(1), confusion.sum(0), np.diag(confusion)
  recall = np.divide(hits, true, out=np.zeros(len(hits)), where=true > 0)
  precision = np.divide(hits, predicted, out=np.zeros(len(hits)), where=predicted > 0)
  f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(hits)),
                 where=precision + recall > 0)
  rows = [{"class": i, "name": names[i], "count": int(true[i]), "accuracy": float(recall[i]),
           "precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i])}
          for i in range(len(names))]
  present = true > 0
  macro = {k: float(v[present].mean()) if present.any() else 0.0
           for k, v in (("precision", precision), ("recall", recall), ("f1", f1))}
  return {"per_class": rows, "macro": macro, "confusion": confusion.tolist()}


def _name(model_path: str, phase, checkpoint_name: str | None = None,
          which: str = "latest") -> str:
  """The output folder's name: the run (seed_N folders with their experiment), the checkpoint
  evaluated (`which` of a run folder, 'latest' or 'best', with its step; a named checkpoint's
  step), the dataset and the split, so no evaluation of another checkpoint overwrites it."""
  step = os.path.basename(checkpoint_name or "")
  base = loader.model_name(model_path, f"_{which}_step{step}" if step.isdigit() else "")
  text = f"{base}_{phase.dataset}_{phase.test_split}"
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def confused_pairs(confusion: np.ndarray, names: list[str], most: int = 20) -> list[tuple]:
  """The `most` largest off-diagonal counts: (true name, predicted name, count, share of the
  true class)."""
  off = confusion.copy()
  np.fill_diagonal(off, 0)
  order = np.argsort(off, axis=None)[::-1][:most]
  totals = confusion.sum(1)
  return [(names[t], names[p], int(off[t, p]), off[t, p] / max(totals[t], 1))
          for t, p in zip(*np.unravel_index(order, off.shape), strict=True) if off[t, p] > 0]


def write(out: str, result: dict) -> None:
  """evaluation.json, evaluation.md and confusion.png into `out`."""
  storage.makedirs(out)
  storage.write_text(storage.join(out, "evaluation.json"), json.dumps(result, indent=2))
  confusion = np.asarray(result["confusion"])
  names = [r["name"] for r in result["per_class"]]
  _plot(confusion, names, storage.join(out, "confusion.png"))
  storage.write_text(storage.join(out, "evaluation.md"),
                     markdown(result, confused_pairs(confusion, names)))


def markdown(result: dict, pairs: list[tuple]) -> str:
  m = result["macro"]
  lines = [f"# Evaluation of `{result['model']}`", "",
           (f"Checkpoint `{result['checkpoint']}` on `{result['dataset']}` split "
           f"`{result['split']}` ({result['count']} images at {result['image_size']} px)."), "",
           "| loss | top-1 | top-5 | macro precision | macro recall | macro F1 |",
           "|---|---|---|---|---|---|",
           (f"| {result['loss']:.4f} | {result['accuracy']:.4f} | {result['top5']:.4f} "
           f"| {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} |"), "",
           "The most confused pairs (`confusion.png`: every pair, row-normalised):", "",
           "| true | predicted as | count | share of the true class |", "|---|---|---|---|"]
  lines += [f"| {t} | {p} | {c} | {s:.3f} |" for t, p, c, s in pairs]
  lines += ["", "| class | name | count | accuracy (recall) | precision | F1 |",
            "|---|---|---|---|---|---|"]
  lines += [f"| {r['class']} | {r['name']} | {r['count']} | {r['accuracy']:.4f} "
            f"| {r['precision']:.4f} | {r['f1']:.4f} |" for r in result["per_class"]]
  return "\n".join(lines) + "\n"


def _plot(confusion: np.ndarray, names: list[str], path: str) -> None:
  """The row-normalised confusion matrix, class names on both axes (small type at 100)."""
  plt = figures.pyplot()
  n = len(names)
  rows = confusion.sum(1, keepdims=True)
  share = np.divide(confusion, rows, out=np.zeros(confusion.shape), where=rows > 0)
  side = min(max(4.0, 0.12 * n + 2), 16.0)
  fig, ax = plt.subplots(figsize=(side + 1, side), dpi=120 if n <= 40 else 150)
  image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
  font = max(3.0, min(9.0, 360 / max(n, 1)))
  ax.set_xticks(range(n), names, rotation=90, fontsize=font)
  ax.set_yticks(range(n), names, fontsize=font)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title("confusion matrix (each row sums to 1)", fontsize="medium")
  fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  figures.write_png(fig, path)
