"""tlflax: transfer learning on images with JAX and Flax."""

__version__ = "0.1.0"


def load(path: str):
  """(model, variables, info) of a tlflax run folder, one of its checkpoints, a torchvision /
  timm safetensors file or hf://ORG/NAME: `model.apply(variables, images, train=False)` gives
  logits for float32 NHWC images resized and normalised as `info` says (see `tlflax.loader`)."""
  from tlflax import loader
  return loader.load(path)
