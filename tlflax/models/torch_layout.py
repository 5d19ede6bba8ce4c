"""torchvision / timm ResNet state dicts to tlflax variables and back, in numpy.

timm's ResNets use torchvision's key names. The mapping, for BasicBlock and Bottleneck models,
with an ImageNet stem (7x7 `conv1`, then a max-pool) or tlflax's CIFAR stem (3x3 `conv1`, none):

  conv1.weight (O, I, kh, kw)          params/stem_conv/kernel (kh, kw, I, O)
  bn1.weight, bn1.bias                 params/stem_bn/scale, bias
  bn1.running_mean, running_var        batch_stats/stem_bn/mean, var
  bn1.num_batches_tracked              dropped on import, 0 on export
  layer{i}.{j}.conv{k}, bn{k}          stage{i}_block{j+1}/conv{k}, bn{k}
  layer{i}.{j}.downsample.0, .1        stage{i}_block{j+1}/proj_conv, proj_bn
  fc.weight (C, F), fc.bias            params/head/kernel (F, C), bias
"""

import dataclasses
import re

import ml_collections
import numpy as np

from tlflax.errors import UserError
from tlflax.models import resnet

_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_BLOCK = re.compile(r"^layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(\w+)$")
# (stage sizes, bottleneck) -> model name, per stem
_IMAGENET = {((2, 2, 2, 2), False): "resnet18_imagenet", ((3, 4, 6, 3), False): "resnet34_imagenet",
             ((3, 4, 6, 3), True): "resnet50_imagenet", ((3, 4, 23, 3), True): "resnet101_imagenet"}
_CIFAR = {((1, 1, 1, 1), False): "resnet10", ((2, 2, 2, 2), False): "resnet18",
          ((3, 4, 6, 3), False): "resnet34"}
SUPPORTED = ("torchvision / timm resnet18, resnet34, resnet50, resnet101 and tlflax's CIFAR "
             "resnet10, resnet18, resnet34, any width and number of classes")


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a state dict holds: the tlflax model name, its width (channels of the first stage) and
  its number of classes."""

  name: str
  width: int
  num_classes: int


def architecture(shapes: dict[str, tuple], source: str) -> Architecture:
  """The tlflax model a torchvision-layout state dict (`{key: shape}`) is, read from its keys and
  shapes; a ResNet tlflax has no model for is a `UserError`."""
  if "module.conv1.weight" in shapes:
    raise UserError(f"{source} was saved from torch.nn.DataParallel (its keys start with "
                    "'module.'): save model.module.state_dict() instead, or strip the prefix "
                    "({k.removeprefix('module.'): v for k, v in state.items()})")
  if "conv1.weight" not in shapes or "fc.weight" not in shapes:
    raise UserError(f"{source} is not a ResNet in torchvision / timm layout (no conv1.weight or "
                    "fc.weight): export it from torchvision or timm as a state dict")
  stages = []
  for i in range(1, 5):
    blocks = {int(m.group(2)) for k in shapes if (m := _BLOCK.match(k)) and m.group(1) == str(i)}
    stages.append(max(blocks) + 1 if blocks else 0)
  bottleneck = "layer1.0.conv3.weight" in shapes
  kernel = shapes["conv1.weight"][2]
  table, stem = (_IMAGENET, "ImageNet") if kernel == 7 else (_CIFAR, "CIFAR")
  name = table.get((tuple(stages), bottleneck))
  if name is None:
    raise UserError(f"{source} holds a ResNet with {stem} stem, stages {tuple(stages)} and "
                    f"{'Bottleneck' if bottleneck else 'BasicBlock'}s, which tlflax has no model "
                    f"for: use ResNet-18, -34, -50 or -101 weights")
  arch = Architecture(name, int(shapes["conv1.weight"][0]), int(shapes["fc.weight"][0]))
  check_shapes(shapes, arch, source)
  return arch


def _target(key: str) -> tuple[str, tuple[str, ...], str] | None:
  """(collection, module path, leaf) of a torchvision key; None for keys without a tlflax
  counterpart (num_batches_tracked)."""
  if key.endswith("num_batches_tracked"):
    return None
  if key == "conv1.weight":
    return "params", ("stem_conv",), "kernel"
  if key.startswith("bn1.") and key[4:] in _BN:
    collection, leaf = _BN[key[4:]]
    return collection, ("stem_bn",), leaf
  if key in ("fc.weight", "fc.bias"):
    return "params", ("head",), "kernel" if key == "fc.weight" else "bias"
  m = _BLOCK.match(key)
  if m is None:
    raise KeyError(key)
  stage, block, part, leaf = m.groups()
  module = {"downsample.0": "proj_conv", "downsample.1": "proj_bn"}.get(part, part)
  path = (f"stage{stage}_block{int(block) + 1}", module)
  if "conv" in module:
    if leaf != "weight":
      raise KeyError(key)
    return "params", path, "kernel"
  if leaf not in _BN:
    raise KeyError(key)
  collection, name = _BN[leaf]
  return collection, path, name


def to_variables(state: dict[str, np.ndarray], source: str) -> dict:
  """{'params': ..., 'batch_stats': ...} (float32) from a torchvision-layout state dict; keys that
  map to nothing in tlflax are a `UserError` listing them."""
  out: dict = {"params": {}, "batch_stats": {}}
  unmapped = []
  for key, value in state.items():
    try:
      target = _target(key)
    except KeyError:
      unmapped.append(key)
      continue
    if target is None:
      continue
    collection, path, leaf = target
    value = np.asarray(value, np.float32)
    if leaf == "kernel":
      value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
    node = out[collection]
    for part in path:
      node = node.setdefault(part, {})
    node[leaf] = value
  if unmapped:
    more = f" (+{len(unmapped) - 6} more)" if len(unmapped) > 6 else ""
    raise UserError(f"{source} has keys that map to no tlflax parameter: "
                    f"{', '.join(sorted(unmapped)[:6])}{more}: use a torchvision or timm ResNet")
  return out


def to_state_dict(variables: dict) -> dict[str, np.ndarray]:
  """The torchvision-layout state dict of tlflax variables (with num_batches_tracked = 0, as
  PyTorch's BatchNorm expects to load)."""
  out = {}
  for key, value, is_kernel, leaf in _torch_items(variables):
    value = np.asarray(value, np.float32)
    if is_kernel:
      value = np.ascontiguousarray(value.T if value.ndim == 2 else value.transpose(3, 2, 0, 1))
    out[key] = value
    if leaf == "scale":
      out[key.rsplit(".", 1)[0] + ".num_batches_tracked"] = np.zeros((), np.int64)
  return out


def _torch_items(variables: dict):
  """(torchvision key, value, is a kernel, tlflax leaf) of every variable of a tlflax tree."""
  names = {v: k for k, v in _BN.items()}
  for collection in ("params", "batch_stats"):
    for path, leaf, value in _leaves(variables.get(collection, {})):
      module = _module_key(path)
      if leaf == "kernel":
        yield f"{module}.weight", value, True, leaf
      elif module == "fc":
        yield "fc.bias", value, False, leaf
      else:
        yield f"{module}.{names[(collection, leaf)]}", value, False, leaf


def _module_key(path: tuple[str, ...]) -> str:
  if path == ("stem_conv",):
    return "conv1"
  if path == ("stem_bn",):
    return "bn1"
  if path == ("head",):
    return "fc"
  stage, block = re.fullmatch(r"stage(\d+)_block(\d+)", path[0]).groups()
  part = {"proj_conv": "downsample.0", "proj_bn": "downsample.1"}.get(path[1], path[1])
  return f"layer{stage}.{int(block) - 1}.{part}"


def expected_shapes(arch: Architecture) -> dict[str, tuple]:
  """{torchvision key: shape} of the state dict of `arch` (no arrays are made)."""
  shapes = resnet.variable_shapes(
      ml_collections.ConfigDict({"name": arch.name, "width": arch.width, "dtype": "float32",
                                 "conv": "xla", "padding": "torch"}), arch.num_classes,
      (32, 32, 3))
  out = {}
  for key, value, is_kernel, _ in _torch_items(shapes):
    shape = tuple(value.shape)
    out[key] = (shape[::-1] if len(shape) == 2 else (shape[3], shape[2], shape[0], shape[1])
                ) if is_kernel else shape
  return out


_PARTS = ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample")
_LEAVES = ("weight", "bias", "running_mean", "running_var")


def _torch_order(key: str) -> tuple:
  """Where `key` comes in a torchvision state dict: the stem, the blocks in order (each one's
  convolutions and BatchNorms as it applies them), the head."""
  parts = key.split(".")
  leaf = _LEAVES.index(parts[-1]) if parts[-1] in _LEAVES else len(_LEAVES)
  m = _BLOCK.match(key)
  if m is None:
    return (0 if parts[0] in ("conv1", "bn1") else 2, parts[0] != "conv1", 0, 0, 0, leaf)
  stage, block, part = int(m.group(1)), int(m.group(2)), m.group(3)
  return (1, stage, block, _PARTS.index(part.split(".")[0]), part, leaf)


def check_shapes(shapes: dict[str, tuple], arch: Architecture, source: str) -> None:
  """A `UserError` naming the first array of a state dict whose shape is not the one `arch`
  has, or the first it lacks: nothing is built from weights of another shape."""
  expected = expected_shapes(arch)
  extra = sorted(k for k in shapes if k not in expected and not k.endswith("num_batches_tracked"))
  if extra:
    more = f" (+{len(extra) - 6} more)" if len(extra) > 6 else ""
    raise UserError(f"{source} has keys that map to no tlflax parameter: "
                    f"{', '.join(extra[:6])}{more}: tlflax imports {SUPPORTED}")
  for key in sorted(expected, key=_torch_order):
    want = expected[key]
    if key not in shapes:
      raise UserError(f"{source} lacks {key} ({want}) of {arch.name} width {arch.width}: it is "
                      f"not a complete {arch.name} state dict; tlflax imports {SUPPORTED}")
    if tuple(shapes[key]) != want:
      raise UserError(f"{source}: {key} has shape {tuple(shapes[key])}, but {arch.name} of width "
                      f"{arch.width} has {want}: these are weights of another architecture "
                      f"(tlflax imports {SUPPORTED})")


def _leaves(tree: dict, path: tuple = ()):
  for key, value in tree.items():
    if isinstance(value, dict):
      yield from _leaves(value, path + (key,))
    else:
      yield path, key, value
