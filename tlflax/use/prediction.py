"""`--mode=predict --model=PATH --input=PATH|GLOB`, and `tlflax.predict` for notebooks.

The images go through the same decode and resize as a folder dataset in training (TensorFlow's
decoder, grey -> RGB, `resize` to the model's image size) and the model's input statistics, then
through the model on every device, `predict.batch_size` at a time. `--input` is a folder (every
.jpg/.jpeg/.png under it), a glob (`'photos/*.jpg'`, quoted), a comma-separated list of files, or
one file. A file that does not decode is a line with its error, not a crash.

Writes DIR/predict/<model>_<inputs>-<digest>/ (`output_name`: one folder per model and input
set, so a second prediction never erases the first): predictions.csv (file, error, then the top
`predict.top_k` class names and probabilities) and predictions.jsonl (the same, one JSON object
a file). When no file decodes it is a one-line error and nothing is written.
"""

import csv
import functools
import glob
import hashlib
import io
import json
import os
import re
import sys

import jax
import numpy as np
from tqdm import tqdm

from tlflax import parallel
from tlflax.data import sources
from tlflax.errors import UserError
from tlflax.io import storage
from tlflax.train import steps
from tlflax.use import export, loader


def input_files(spec: str) -> list[str]:
  """The files `--input` names (see the module docstring), in a fixed order."""
  if os.path.isdir(spec):
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(spec) for f in names
                   if f.lower().endswith(sources.IMAGE_SUFFIXES))
  elif any(c in spec for c in "*?["):
    files = sorted(f for f in glob.glob(os.path.expanduser(spec), recursive=True)
                   if os.path.isfile(f))
  else:
    files = [f for f in spec.split(",") if f]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
      raise UserError(f"--input names files that do not exist ({', '.join(missing[:3])}): pass "
                      "a folder, a quoted glob, or existing files separated by commas")
  if not files:
    raise UserError(f"--input={spec} matches no image file: pass a folder of .jpg/.png files, a "
                    "quoted glob, or files separated by commas")
  return files


def decode(files: list[str], size: int, resize: str) -> tuple[np.ndarray, list[str | None]]:
  """uint8 (N, size, size, 3) images of `files` (zeros where a file does not decode) and, per
  file, None or why it did not."""
  tf = sources.tensorflow()
  fit = sources.image_fitter(size, resize)
  images = np.zeros((len(files), size, size, 3), np.uint8)
  errors: list[str | None] = []
  for i, file in enumerate(files):
    try:
      image = tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
      images[i] = fit(image).numpy()
      errors.append(None)
    except (tf.errors.OpError, ValueError) as e:
      errors.append(f"not a decodable image ({type(e).__name__})")
  return images, errors


class Predictor:
  """Class probabilities of a loaded model (`tlflax.load`) on uint8 images at its image size,
  `batch_size` at a time over every device of `placement` (the last batch padded)."""

  def __init__(self, model, variables, info: dict, batch_size: int, placement=None):
    self.placement = placement or parallel.Placement.create()
    self.batch = self.placement.round_up(batch_size)
    self.variables = self.placement.replicate(jax.device_get(variables))
    serve = export.serving_function(model, info)
    self._fn = self.placement.spmd(functools.partial(_probabilities, serve=serve), 2, split=(1,))

  def __call__(self, images: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), self.batch):
      chunk = images[start:start + self.batch]
      padded = np.zeros((self.batch,) + images.shape[1:], np.uint8)
      padded[:len(chunk)] = chunk
      lo, hi = self.placement.columns(self.batch)
      batch = self.placement.split(padded[None, lo:hi], self.batch)
      out.append(np.asarray(jax.device_get(self._fn(self.variables, batch)))[:len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def _probabilities(variables, images, *, serve, axis_name=None):
  """Per shard: the probabilities the exported model serves (`export.serving_function`) for this
  shard's images, put at their positions in the global batch and summed over the shards (every
  device then holds the whole batch's)."""
  return steps.whole_batch(serve(variables, images[0]), axis_name)


def as_images(images) -> np.ndarray:
  """`tlflax.predict`'s input as uint8 (N, H, W, 3) RGB, or a ValueError naming shape, dtype
  and range. Accepted: one image (H, W, C) or a batch (N, H, W, C) with C = 3 (RGB), 4 (RGBA:
  the alpha is dropped, as the CLI's decoder does) or 1 (grey: repeated to RGB, likewise), or
  grey without a channel axis, (N, H, W) (a single grey image is (1, H, W) or (H, W, 1));
  values as integers in 0..255 (any integer type) or as floats in [0, 1] (scaled to 0..255 and
  rounded). Anything else is refused, never reinterpreted."""
  a = np.asarray(images)
  what = f"images of shape {a.shape} and dtype {a.dtype}"
  if a.ndim == 3 and a.shape[-1] in (1, 3, 4):
    a = a[None]  # one (H, W, C) image
  elif a.ndim == 3:
    a = a[..., None]  # (N, H, W) grey
  if a.ndim != 4 or a.shape[-1] not in (1, 3, 4) or min(a.shape[:3], default=0) == 0:
    raise ValueError(f"tlflax.predict takes (H, W, C) or (N, H, W, C) images with C = 1, 3 or 4, "
                     f"or (N, H, W) grey ones; got {what}")
  if a.dtype == np.bool_ or not (np.issubdtype(a.dtype, np.integer)
                                 or np.issubdtype(a.dtype, np.floating)):
    raise ValueError(f"tlflax.predict takes integer (0..255) or float ([0, 1]) pixels; got {what}")
  if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
    raise ValueError(f"tlflax.predict takes float pixels in [0, 1]; got {what} with non-finite "
                     "values (NaN or infinity)")
  low, high = a.min(), a.max()
  if np.issubdtype(a.dtype, np.floating):
    if low < 0 or high > 1:
      raise ValueError(f"tlflax.predict takes float pixels in [0, 1]; got {what} in "
                       f"[{low}, {high}]: divide 0..255 values by 255, or pass them as uint8")
    a = np.rint(a * 255.0)
  elif low < 0 or high > 255:
    raise ValueError(f"tlflax.predict takes integer pixels in 0..255; got {what} in "
                     f"[{low}, {high}]: scale them to 0..255 first (e.g. 16-bit: // 257)")
  a = a.astype(np.uint8)
  if a.shape[-1] == 1:
    a = np.repeat(a, 3, axis=-1)
  return np.ascontiguousarray(a[..., :3])


def predict(model_or_path, images, batch_size: int = 64):
  """(probabilities (N, C), class names) of `images` (see `as_images`: uint8 or [0, 1] floats,
  one image or a batch, RGB, RGBA or grey, any H, W: resized as training resizes) under the model
  `model_or_path` names (whatever `tlflax.load` takes)."""
  images = as_images(images)
  model, variables, info = loader.load(model_or_path, "tlflax.predict")
  size = info["image_size"]
  if images.shape[1:3] != (size, size):
    fit = sources.image_fitter(size, _resize(info))
    images = np.stack([fit(image).numpy() for image in images])
  probs = Predictor(model, variables, info, batch_size)(images.astype(np.uint8))
  return probs, loader.class_names(info)


def _resize(info: dict) -> str:
  return loader.trained_phase(info["config"]).get("resize", "squash")


def run(model_path: str, input_spec: str, config, workdir: str, placement=None) -> str:
  """`--mode=predict`: predictions for every file of `input_spec`; returns the output folder."""
  files = input_files(input_spec)
  model, variables, info = loader.load(model_path, "--model")
  images, errors = decode(files, info["image_size"], _resize(info))
  if all(errors):
    raise UserError(f"none of the {len(files)} file(s) of --input={input_spec} decodes as an image "
                    f"({files[0]}: {errors[0]}): pass JPEG, PNG, GIF or BMP files")
  predictor = Predictor(model, variables, info, config.predict.batch_size, placement)
  names, k = loader.class_names(info), min(config.predict.top_k, info["num_classes"])
  probs = []
  with tqdm(total=len(files), unit="img", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
    for start in range(0, len(files), predictor.batch):
      probs.append(predictor(images[start:start + predictor.batch]))
      bar.update(len(probs[-1]))
  probs = np.concatenate(probs)
  out = os.path.join(workdir, "predict", output_name(model_path, input_spec, files))
  if parallel.is_main_process():
    _write(out, files, errors, probs, names, k)
  parallel.sync("predicted")
  return out


def output_name(model_path: str, input_spec: str, files: list[str]) -> str:
  """The folder of one prediction: the model (a study's seed folder with its experiment, a
  checkpoint with its step), the input set's name and a digest of its files, so predicting
  other files, or with another model, never overwrites an earlier prediction."""
  model = loader.model_name(model_path)
  first = input_spec.split(",")[0].rstrip("/")
  inputs = os.path.basename(os.path.dirname(first) if any(c in first for c in "*?[") else first)
  digest = hashlib.sha256("\n".join(os.path.abspath(f) for f in files).encode()).hexdigest()[:8]
  name = f"{os.path.splitext(model)[0]}_{os.path.splitext(inputs)[0] or 'input'}-{digest}"
  return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def _write(out: str, files, errors, probs, names, k: int) -> None:
  storage.makedirs(out)
  header = ["file", "error"] + [c for i in range(1, k + 1) for c in (f"top{i}", f"p{i}")]
  f_csv, lines = io.StringIO(newline=""), []
  writer = csv.writer(f_csv)
  writer.writerow(header)
  for file, error, p in zip(files, errors, probs, strict=True):
    top = [] if error else [(names[c], float(p[c])) for c in np.argsort(-p)[:k]]
    cells = [file, error or ""] + [v for name, prob in top for v in (name, f"{prob:.6f}")]
    writer.writerow(cells + [""] * (len(header) - len(cells)))
    lines.append(json.dumps({"file": file, "error": error, "top": [
        {"class": name, "probability": prob} for name, prob in top]}) + "\n")
  storage.write_text(storage.join(out, "predictions.csv"), f_csv.getvalue())
  storage.write_text(storage.join(out, "predictions.jsonl"), "".join(lines))
