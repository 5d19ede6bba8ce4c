"""tlflax: transfer learning on images with JAX and Flax.

The package's layers, each a sub-package whose docstring says its job and what it may import,
from the bottom up (tests/test_layers.py holds this order and fails on an import pointing up):

  errors, parallel   one-line user errors and stops; processes, devices, placement
  config             every key's default and meaning, the builders, validation, --config
  io                 files of a workdir (local, gs://, s3://), checkpoints, run folders
  data               datasets (tfds, folders, synthetic), a phase's task, the feeds
  models             the ResNet family, its convolutions, PyTorch layouts and weight files
  train              one step, one epoch, one run, one phase (a run in its folder)
  study, use         the study of many runs and its report | a trained model: load, evaluate,
                     predict, export, convert
  tools              the step benchmark and its PyTorch reference
  main               the command line
"""

__version__ = "0.1.0"

# Before anything touches a gs:// or s3:// path: etils.epath through fsspec (see io/storage.py).
from tlflax.io import storage as _storage  # noqa: F401


def load(path: str):
  """(model, variables, info) of a tlflax run folder, one of its checkpoints, a torchvision /
  timm safetensors file or hf://ORG/NAME: `model.apply(variables, images, train=False)` gives
  logits for float32 NHWC images resized and normalised as `info` says (see `tlflax.use.loader`)."""
  # Imported here, not above: every `import tlflax.<module>` runs this file first, and the use
  # layer brings jax, flax and TensorFlow with it.
  from tlflax.use import loader
  return loader.load(path)


def predict(model, images, batch_size: int = 64):
  """(probabilities (N, C), class names) of `images` under the model `model` names (whatever
  `load` takes). `images`: one (H, W, C) image or a batch (N, H, W, C), C = 3 (RGB), 4 (RGBA)
  or 1 (grey), or grey (N, H, W); integers in 0..255 or floats in [0, 1]; any other input is a
  ValueError naming its shape, dtype and range (`tlflax.use.prediction.as_images`). Images of
  another size are resized as training resizes."""
  from tlflax.use import prediction  # lazily, as in `load`
  return prediction.predict(model, images, batch_size)
