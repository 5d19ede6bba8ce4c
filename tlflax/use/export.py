"""`--mode=export --model=PATH`: the model with its preprocessing folded in, for serving.

The exported function takes a uint8 batch (N, S, S, 3) of RGB images at the model's image size S
(any N: the batch dimension is symbolic), normalises it with the model's input statistics and
returns class probabilities (N, C), float32. Two forms, in DIR/export/:

  jax/model.jaxexport    a serialized `jax.export` artifact: `jax.export.deserialize(bytes)
                         .call(images)` with jax alone, no tlflax, no Flax, on CPU, GPU or TPU
  jax/model.json         class names, image size, input and output, mean, std, where it came from
  saved_model/           a TensorFlow SavedModel (through jax2tf), whose `serving_default`
                         signature `tf.saved_model.load` serves; model.json beside it too

Resizing is left to the caller (decode and resize as `tlflax.predict` does: TensorFlow's bilinear,
antialiased), so the served numbers are the model's own.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from tlflax import parallel
from tlflax.data import batches, sources
from tlflax.io import storage
from tlflax.use import loader

ARTIFACT = "model.jaxexport"
PLATFORMS = ("cpu", "cuda", "tpu")  # the artifact runs on any of them, whichever exported it


def serving_function(model, info: dict):
  """`serve(variables, images)`: uint8 (N, S, S, 3) -> float32 probabilities (N, C)."""
  mean = np.asarray(info["mean"], np.float32)
  std = np.asarray(info["std"], np.float32)

  def serve(variables, images):
    x = batches.normalize(images, mean, std)
    return jax.nn.softmax(model.apply(variables, x, train=False).astype(jnp.float32), -1)

  return serve


def describe(info: dict, form: str) -> dict:
  """model.json: what goes in and out, and where the weights came from."""
  size = info["image_size"]
  names = loader.class_names(info)
  return {"format": form, "model": info["model"], "width": info["width"],
          "num_classes": info["num_classes"], "class_names": names, "image_size": size,
          "input": f"uint8 (N, {size}, {size}, 3), RGB, resized to {size}x{size}",
          "output": f"float32 (N, {info['num_classes']}) class probabilities",
          "mean": list(info["mean"]), "std": list(info["std"]), "source": info["source"],
          "checkpoint": info.get("checkpoint") or info.get("file")}


def export_jax(model, variables, info: dict, out: str) -> str:
  """Writes out/model.jaxexport (the variables inside) and out/model.json."""
  size = info["image_size"]
  serve = serving_function(model, info)
  host = jax.device_get(variables)
  (batch,) = jax.export.symbolic_shape("n")
  exported = jax.export.export(jax.jit(lambda images: serve(host, images)),
                               platforms=PLATFORMS)(
      jax.ShapeDtypeStruct((batch, size, size, 3), jnp.uint8))
  storage.makedirs(out)
  storage.write_bytes(storage.join(out, ARTIFACT), bytes(exported.serialize()))
  _write_json(out, describe(info, "jax.export"))
  return out


def load_jax(folder: str):
  """The exported function of a jax/ folder: `call(images) -> probabilities`."""
  return jax.export.deserialize(bytearray(storage.read_bytes(storage.join(folder, ARTIFACT)))).call


def export_saved_model(model, variables, info: dict, out: str) -> str:
  """Writes a TensorFlow SavedModel of the serving function (the variables as tf.Variables) and
  its model.json."""
  tf = sources.tensorflow()
  from jax.experimental import jax2tf  # lazily: it imports TensorFlow, for SavedModels only
  size = info["image_size"]
  serve = serving_function(model, info)
  host = jax.device_get(variables)
  converted = jax2tf.convert(serve, polymorphic_shapes=[None, f"(n, {size}, {size}, 3)"],
                             with_gradient=False)
  module = tf.Module()
  module.variables_ = tf.nest.map_structure(tf.Variable, host)

  @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")],
               autograph=False)
  def serving_default(images):
    return {"probabilities": converted(module.variables_, images)}

  module.serving_default = serving_default
  with storage.local_folder(out) as folder:  # TensorFlow's writer, uploaded to a store after
    tf.saved_model.save(module, folder, signatures={"serving_default": serving_default})
  _write_json(out, describe(info, "saved_model"))
  return out


def run(model_path: str, workdir: str) -> str:
  """`--mode=export`: both forms of the model `model_path` names; returns DIR/export."""
  model, variables, info = loader.load(model_path, "--model")
  out = os.path.join(workdir, "export")
  if parallel.is_main_process():
    export_jax(model, variables, info, os.path.join(out, "jax"))
    export_saved_model(model, variables, info, os.path.join(out, "saved_model"))
  parallel.sync("exported")
  return out


def _write_json(folder: str, record: dict) -> None:
  storage.write_text(storage.join(folder, "model.json"), json.dumps(record, indent=2))
