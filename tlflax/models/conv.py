"""Convolutions with a GEMM weight gradient, for the CPU backend.

On the CPU, XLA computes the weight gradient (dW) of a convolution with a generic kernel that
runs at a few GFLOP/s: for a 3x3 convolution on 32x32x64 activations it takes 20 times as long as
the forward pass, and dominates a ResNet train step (see docs/benchmarks.md). The same dW is a sum
over kernel offsets of matrix products: for offset (i, j), the input strided-sliced at that
offset, as an (N*H*W, C) matrix, transposed times the output gradient as an (N*H*W, O) matrix.
Those products run on the backend's GEMM, at the speed of the forward pass.

`conv_general_dilated` below is a drop-in for `jax.lax.conv_general_dilated` (it is what
`flax.linen.Conv(conv_general_dilated=...)` calls): its forward pass and input gradient are
XLA's own, which are fast everywhere; only dW is replaced. Shapes it does not cover (dilation,
groups, layouts other than NHWC/HWIO) go to XLA unchanged.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from tlflax.errors import UserError

IMPLS = ("auto", "xla", "gemm")
_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def resolve(impl: str) -> str:
  """The convolution a config value stands for: 'auto' is 'gemm' on the CPU, 'xla' elsewhere
  (GPU and TPU compilers have fast weight gradients of their own)."""
  if impl not in IMPLS:
    raise UserError(f"unknown model.conv {impl!r}: choose one of {', '.join(IMPLS)}")
  if impl == "auto":
    return "gemm" if jax.default_backend() == "cpu" else "xla"
  return impl


def function(impl: str):
  """The `conv_general_dilated` function of a resolved implementation name."""
  return conv_general_dilated if resolve(impl) == "gemm" else lax.conv_general_dilated


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return dimension_numbers == lax.conv_dimension_numbers(
        (1, 1, 1, 1), (1, 1, 1, 1), _DIMENSION_NUMBERS)
  return tuple(dimension_numbers) == _DIMENSION_NUMBERS


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         batch_group_count=1, precision=None, preferred_element_type=None):
  """`jax.lax.conv_general_dilated` with a GEMM weight gradient for 2-D NHWC/HWIO convolutions
  without dilation or groups; every other case is passed to XLA as is."""
  plain = (lhs.ndim == 4 and _is_nhwc(dimension_numbers) and feature_group_count == 1
           and batch_group_count == 1 and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
        dimension_numbers=dimension_numbers, feature_group_count=feature_group_count,
        batch_group_count=batch_group_count, precision=precision,
        preferred_element_type=preferred_element_type)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _conv(lhs, rhs, strides, pads, precision)


def _xla_conv(x, w, strides, pads, precision):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=_DIMENSION_NUMBERS,
                                  precision=precision)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision)


def _conv_fwd(x, w, strides, pads, precision):
  return _xla_conv(x, w, strides, pads, precision), (x, w)


def _conv_bwd(strides, pads, precision, residuals, g):
  x, w = residuals
  _, input_vjp = jax.vjp(lambda x: _xla_conv(x, w, strides, pads, precision), x)
  (dx,) = input_vjp(g)
  return dx, weight_gradient(x, g, w.shape, strides, pads, precision).astype(w.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def weight_gradient(x, g, kernel_shape, strides, pads, precision=None):
  """dW of an NHWC/HWIO convolution as one GEMM per kernel offset, accumulated in float32.

  For offset (i, j), the padded input sliced from (i, j) with the convolution's strides lines up
  with the output gradient pixel by pixel; its (pixels, C) matrix, transposed, times the
  gradient's (pixels, O) matrix is the (C, O) slice W[i, j] of the weight gradient.
  """
  kh, kw, c, o = kernel_shape
  batch, out_h, out_w, _ = g.shape
  (top, bottom), (left, right) = pads
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (top, bottom, 0), (left, right, 0),
                                          (0, 0, 0)))
  rows = g.reshape(-1, o)
  sh, sw = strides
  blocks = []
  for i in range(kh):
    for j in range(kw):
      shifted = lax.slice(x, (0, i, j, 0),
                          (batch, i + (out_h - 1) * sh + 1, j + (out_w - 1) * sw + 1, c),
                          (1, sh, sw, 1))
      blocks.append(jnp.matmul(shifted.reshape(-1, c).T, rows, precision=precision,
                               preferred_element_type=jnp.float32))
  return jnp.stack(blocks).reshape(kh, kw, c, o)
