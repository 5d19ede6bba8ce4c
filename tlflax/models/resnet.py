"""ResNets: for CIFAR-sized images (3x3 stride-1 stem, no max-pool) and as torchvision builds
them for ImageNet (7x7 stride-2 stem, 3x3 stride-2 max-pool, BasicBlocks or v1.5 Bottlenecks with
the stride on the 3x3 convolution), then a global average pool and `head`.

Parameter paths are meant to be read by freeze and learning-rate rules:
`stem_conv`, `stem_bn`, `stage{i}_block{j}/{conv1,bn1,conv2,bn2[,conv3,bn3],proj_conv,proj_bn}`,
`head`. Convolutions pad as PyTorch's do (k // 2 on every side; `padding='torch'`), so weights
move to and from torchvision exactly; `padding='same'` is XLA's SAME, which pads a stride-2 3x3
convolution (0, 1) on even sizes (what tlflax runs used before, kept to resume them).
"""

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tlflax.errors import UserError
from tlflax.models import conv as conv_lib

# torchvision's ResNet init (kaiming normal, fan_out), which the seed study used.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]  # conv(features, kernel, strides, name)
  norm: Callable[..., nn.Module]  # norm(name) -> BatchNorm
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, 3, self.strides, "conv1")(x)
    y = nn.relu(self.norm("bn1")(y))
    y = self.conv(self.filters, 3, 1, "conv2")(y)
    y = self.norm("bn2")(y)
    if x.shape != y.shape:
      x = self.conv(self.filters, 1, self.strides, "proj_conv")(x)
      x = self.norm("proj_bn")(x)
    return nn.relu(x + y)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (ResNet v1.5): 1x1 down to `filters`, 3x3 with the stride, 1x1 up
  to 4 x `filters`, with a residual connection (projected when the shape changes)."""

  filters: int
  strides: int
  conv: Callable[..., nn.Module]
  norm: Callable[..., nn.Module]
  expansion = 4

  @nn.compact
  def __call__(self, x):
    y = nn.relu(self.norm("bn1")(self.conv(self.filters, 1, 1, "conv1")(x)))
    y = nn.relu(self.norm("bn2")(self.conv(self.filters, 3, self.strides, "conv2")(y)))
    y = self.norm("bn3")(self.conv(self.filters * 4, 1, 1, "conv3")(y))
    if x.shape != y.shape:
      x = self.norm("proj_bn")(self.conv(self.filters * 4, 1, self.strides, "proj_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A ResNet built from `stage_sizes` (blocks per stage); widths double per stage. `stem`:
  'cifar' (3x3 stride 1, no pooling) or 'imagenet' (7x7 stride 2, 3x3 stride-2 max-pool).

  `dtype` is the compute precision; parameters and BatchNorm statistics stay float32 and the
  logits are returned in float32. `axis_name` makes BatchNorm average its batch statistics over
  that named axis (set it only when running under `shard_map` / `pmap`).

  For transfer learning: BatchNorm modules named in `frozen_bn` (paths like 'stem_bn' or
  'stage1_block2/bn1') normalise with their running averages even in training and leave them
  unchanged; `stop_gradient_units` = k stops the backward pass after the first k units of
  (stem, stage1, ..., stageN), so a frozen prefix costs no backward work.
  """

  stage_sizes: Sequence[int]
  num_classes: int
  width: int = 64
  block_cls: Any = BasicBlock
  dtype: Any = jnp.float32
  axis_name: str | None = None
  frozen_bn: tuple[str, ...] = ()
  stop_gradient_units: int = 0
  conv_fn: Callable | None = None  # a jax.lax.conv_general_dilated drop-in (see conv.py)
  stem: str = "cifar"
  padding: str = "torch"

  @nn.compact
  def __call__(self, x, train: bool = False, features_only: bool = False,
               stage_features: bool = False):
    def conv(features: int, kernel: int, strides: int, name: str):
      pad = "SAME" if self.padding == "same" else [(kernel // 2, kernel // 2)] * 2
      return nn.Conv(features, (kernel, kernel), (strides, strides), padding=pad, use_bias=False,
                     dtype=self.dtype, kernel_init=_conv_init,
                     conv_general_dilated=self.conv_fn, name=name)

    def norm_at(prefix):
      def norm(name):
        running = not train or f"{prefix}{name}" in self.frozen_bn
        return nn.BatchNorm(use_running_average=running, momentum=0.9, epsilon=1e-5,
                            dtype=self.dtype, axis_name=None if running else self.axis_name,
                            name=name)
      return norm

    def unit_done(x, unit):  # unit k is finished: cut the backward pass after the frozen prefix
      return jax.lax.stop_gradient(x) if unit + 1 == self.stop_gradient_units else x

    x = jnp.asarray(x, self.dtype)
    imagenet = self.stem == "imagenet"
    x = conv(self.width, 7 if imagenet else 3, 2 if imagenet else 1, "stem_conv")(x)
    x = nn.relu(norm_at("")("stem_bn")(x))
    if imagenet:  # padded with -inf, as PyTorch's MaxPool2d(3, 2, 1)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    x = unit_done(x, 0)
    taps = {}
    for i, num_blocks in enumerate(self.stage_sizes):
      for j in range(num_blocks):
        strides = 2 if i > 0 and j == 0 else 1
        name = f"stage{i + 1}_block{j + 1}"
        x = self.block_cls(self.width * 2**i, strides, conv, norm_at(f"{name}/"), name=name)(x)
      x = unit_done(x, i + 1)
      if stage_features:
        taps[f"stage{i + 1}"] = jnp.asarray(jnp.mean(x, axis=(1, 2)), jnp.float32)
    x = jnp.mean(x, axis=(1, 2))
    if features_only:  # what the head sees, for a cached linear probe (probe.py)
      return jnp.asarray(x, jnp.float32)
    if stage_features:  # every stage's output, pooled, and the logits (transferability scores)
      return {**taps, "logits": head_logits(self, None, x)}
    return head_logits(self, None, x)


def head_logits(model: ResNet, head_params, features: jax.Array) -> jax.Array:
  """The head of `model` on pooled features, float32 logits. Inside the model (head_params None)
  it is the `head` submodule; outside, it applies `head_params` exactly as the model would."""
  head = nn.Dense(model.num_classes, dtype=model.dtype, name="head")
  logits = head(features) if head_params is None else head.apply({"params": head_params},
                                                                  features)
  return jnp.asarray(logits, jnp.float32)


def ResNet10(num_classes: int, width: int = 64, dtype=jnp.float32, **kwargs) -> ResNet:
  """CIFAR ResNet-10: one BasicBlock per stage [1, 1, 1, 1]; half the depth, quick on a CPU."""
  return ResNet((1, 1, 1, 1), num_classes, width, BasicBlock, dtype, **kwargs)


def ResNet18(num_classes: int, width: int = 64, dtype=jnp.float32, **kwargs) -> ResNet:
  """The seed's CIFAR ResNet-18: BasicBlocks [2, 2, 2, 2]."""
  return ResNet((2, 2, 2, 2), num_classes, width, BasicBlock, dtype, **kwargs)


def ResNet34(num_classes: int, width: int = 64, dtype=jnp.float32, **kwargs) -> ResNet:
  """CIFAR ResNet-34: BasicBlocks [3, 4, 6, 3]."""
  return ResNet((3, 4, 6, 3), num_classes, width, BasicBlock, dtype, **kwargs)


def _imagenet(stage_sizes, block_cls):
  def build(num_classes: int, width: int = 64, dtype=jnp.float32, **kwargs) -> ResNet:
    return ResNet(stage_sizes, num_classes, width, block_cls, dtype, stem="imagenet", **kwargs)
  return build


MODELS = {"resnet10": ResNet10, "resnet18": ResNet18, "resnet34": ResNet34,
          # torchvision's ImageNet ResNets (any image size; 128-224 px is what they are for)
          "resnet18_imagenet": _imagenet((2, 2, 2, 2), BasicBlock),
          "resnet34_imagenet": _imagenet((3, 4, 6, 3), BasicBlock),
          "resnet50_imagenet": _imagenet((3, 4, 6, 3), Bottleneck),
          "resnet101_imagenet": _imagenet((3, 4, 23, 3), Bottleneck)}
PADDINGS = ("torch", "same")


def num_stages(name: str) -> int:
  """How many residual stages model `name` has (freeze policies count in stages)."""
  return len(create_model(name, 1).stage_sizes)


def resolve_dtype(dtype: str) -> str:
  """The compute dtype a config value stands for: 'auto' is bfloat16 on GPU/TPU, float32 on CPU.
  float16 (for GPUs without fast bfloat16: T4, V100) trains with dynamic loss scaling
  (`steps.TrainState.loss_scale`)."""
  if dtype == "auto":
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"
  if dtype not in DTYPES:
    raise UserError(f"unknown model.dtype {dtype!r}: choose one of auto, {', '.join(DTYPES)}")
  return dtype


def loss_scaling(model_cfg) -> bool:
  """Whether a run of the `model` block trains with dynamic loss scaling (float16 compute)."""
  return resolve_dtype(model_cfg.dtype) == "float16"


def create_model(name: str, num_classes: int, width: int = 64, dtype: str = "float32",
                 conv: str = "auto", padding: str = "torch", **kwargs) -> ResNet:
  """Builds a model from config values; unknown names, dtypes, convolutions and paddings are a
  `UserError`. `conv` is 'auto' (GEMM weight gradients on the CPU, XLA's own elsewhere),
  'xla' or 'gemm'."""
  if name not in MODELS:
    raise UserError(f"unknown model.name {name!r}: choose one of {sorted(MODELS)}")
  if padding not in PADDINGS:
    raise UserError(f"unknown model.padding {padding!r}: choose 'torch' (PyTorch's) or 'same' "
                    "(XLA's SAME, for run folders trained before 'torch' was the default)")
  dtype = resolve_dtype(dtype)
  if width < 1:
    raise UserError(f"model.width must be a positive integer, got {width}")
  conv_fn = None if conv_lib.resolve(conv) == "xla" else conv_lib.conv_general_dilated
  return MODELS[name](num_classes, width, DTYPES[dtype], conv_fn=conv_fn, padding=padding,
                      **kwargs)


def from_config(model_cfg, num_classes: int, **kwargs) -> ResNet:
  """`create_model` from a config's `model` block (name, width, dtype, conv, padding)."""
  return create_model(model_cfg.name, num_classes, model_cfg.width, model_cfg.dtype,
                      model_cfg.conv, model_cfg.padding, **kwargs)


# ------------------------------------------------------------------------------------------------
# Variables
# ------------------------------------------------------------------------------------------------


def init_model(model, key: jax.Array | int, image_shape) -> dict:
  """Fresh params and batch_stats of `model` for images of `image_shape`, on the default device.

  `key` may be an int seed (its first split is the init key). The key is an argument of the
  jitted init, not a constant, so one compilation serves every seed. Runs place the result on
  their devices with `Placement.replicate`, so the same program serves every placement too.
  """
  if isinstance(key, int):
    key = jax.random.split(jax.random.key(key), 3)[0]
  dummy = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
  # Init runs once, so its compilation is what costs: the key derivations flax makes per
  # parameter unroll into a large program, and on the CPU most of the time goes to XLA's backend
  # optimisations (ResNet-10 width 4: 19 s -> 3.4 s without them; ResNet-18 width 64: 11.8 s ->
  # 5.9 s), which change nothing but last-bit rounding of the initial weights.
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jax.jit(functools.partial(model.init, train=False), compiler_options=options)(key, dummy)


def init_variables(model_cfg, num_classes: int, image_shape, seed: int) -> dict:
  """Fresh variables of the configured model, from the seed's init key (default device)."""
  return init_model(from_config(model_cfg, num_classes), seed, image_shape)


def variable_shapes(model_cfg, num_classes: int, image_shape) -> dict:
  """ShapeDtypeStructs of the configured model's variables, without computing (or compiling)
  an init."""
  model = from_config(model_cfg, num_classes)
  dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), dummy)


def count_params(params) -> int:
  """Number of scalar parameters in a tree."""
  return int(sum(math.prod(x.shape) for x in jax.tree.leaves(params)))
