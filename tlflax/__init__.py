"""tlflax: transfer learning on images with JAX and Flax."""

__version__ = "0.1.0"

# Before anything touches a gs:// or s3:// path: etils.epath through fsspec (see storage.py).
from tlflax.io import storage as _storage  # noqa: F401


def load(path: str):
  """(model, variables, info) of a tlflax run folder, one of its checkpoints, a torchvision /
  timm safetensors file or hf://ORG/NAME: `model.apply(variables, images, train=False)` gives
  logits for float32 NHWC images resized and normalised as `info` says (see `tlflax.loader`)."""
  from tlflax.use import loader
  return loader.load(path)


def predict(model, images, batch_size: int = 64):
  """(probabilities (N, C), class names) of uint8 (N, H, W, 3) RGB `images` under the model
  `model` names (whatever `load` takes); images of another size are resized as training resizes
  (see `tlflax.prediction`)."""
  from tlflax.use import prediction
  return prediction.predict(model, images, batch_size)
