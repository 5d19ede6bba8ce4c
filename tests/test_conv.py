"""The GEMM-weight-gradient convolution equals jax.lax.conv_general_dilated, values and grads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tlflax.errors import UserError
from tlflax.models import conv, resnet
from tlflax.train import steps

DN = ("NHWC", "HWIO", "NHWC")


def _inputs(shape, kernel, dtype, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal(shape), dtype)
  w = jnp.asarray(rng.standard_normal(kernel) / np.sqrt(np.prod(kernel[:3])), dtype)
  return x, w


def _loss(conv_fn, strides, padding):
  def loss(x, w):
    y = conv_fn(x, w, strides, padding, dimension_numbers=DN)
    # A fixed, non-uniform cotangent, so every output pixel's gradient matters.
    weights = jnp.cos(jnp.arange(y.size, dtype=jnp.float32).reshape(y.shape))
    return jnp.sum(y.astype(jnp.float32) * weights)
  return loss


def _rel(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
@pytest.mark.parametrize("size,kernel,strides,padding", [
    (8, 3, 1, "SAME"), (8, 3, 2, "SAME"), (7, 3, 2, "SAME"), (8, 1, 1, "SAME"),
    (8, 1, 2, "SAME"), (9, 3, 1, "VALID"), (8, 3, 1, ((2, 0), (0, 1)))])
def test_values_and_gradients_equal_xla(size, kernel, strides, padding, dtype, tol):
  x, w = _inputs((3, size, size, 5), (kernel, kernel, 5, 6), dtype)
  stride = (strides, strides)
  y_ref = lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=DN)
  y = conv.conv_general_dilated(x, w, stride, padding, dimension_numbers=DN)
  assert y.dtype == y_ref.dtype and y.shape == y_ref.shape
  assert _rel(y, y_ref) == 0.0  # the forward pass is XLA's own
  grads_ref = jax.grad(_loss(lax.conv_general_dilated, stride, padding), (0, 1))(x, w)
  grads = jax.jit(jax.grad(_loss(conv.conv_general_dilated, stride, padding), (0, 1)))(x, w)
  for g, g_ref in zip(grads, grads_ref):
    assert g.dtype == g_ref.dtype and g.shape == g_ref.shape
    assert _rel(g, g_ref) < tol


def test_weight_gradient_is_not_xlas():
  """The backward pass really takes the GEMM path: its HLO has one dot per kernel offset."""
  x, w = _inputs((2, 8, 8, 4), (3, 3, 4, 4), jnp.float32)
  loss = _loss(conv.conv_general_dilated, (1, 1), "SAME")
  hlo = jax.jit(jax.grad(loss, 1)).lower(x, w).as_text()
  assert hlo.count("dot_general") == 9
  hlo_ref = jax.jit(jax.grad(_loss(lax.conv_general_dilated, (1, 1), "SAME"), 1)).lower(
      x, w).as_text()
  assert hlo_ref.count("dot_general") == 0


def test_unsupported_cases_go_to_xla_unchanged():
  x, w = _inputs((2, 9, 9, 4), (3, 3, 2, 4), jnp.float32)
  for kwargs in ({"feature_group_count": 2}, {"rhs_dilation": (2, 2)}):
    if "rhs_dilation" in kwargs:
      w = _inputs((2, 9, 9, 4), (3, 3, 4, 4), jnp.float32)[1]
    args = (x, w, (1, 1), "SAME")
    ref = lax.conv_general_dilated(*args, dimension_numbers=DN, **kwargs)
    got = conv.conv_general_dilated(*args, dimension_numbers=DN, **kwargs)
    assert _rel(got, ref) == 0.0


def test_resnet_train_gradients_equal_with_either_convolution():
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  labels = jnp.arange(4) % 10
  grads = {}
  for impl in ("xla", "gemm"):
    model = resnet.create_model("resnet10", 10, width=4, conv=impl)
    variables = resnet.init_model(model, 0, x.shape[1:])

    def loss(params, model=model, variables=variables):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return jnp.mean(steps.cross_entropy(logits, labels))
    grads[impl] = jax.jit(jax.grad(loss))(variables["params"])
  flat_x, flat_g = jax.tree.leaves(grads["xla"]), jax.tree.leaves(grads["gemm"])
  assert len(flat_x) == len(flat_g) > 10
  assert max(_rel(g, r) for g, r in zip(flat_g, flat_x)) < 1e-4


def test_auto_resolves_by_backend_and_unknown_is_a_user_error():
  assert conv.resolve("auto") == ("gemm" if jax.default_backend() == "cpu" else "xla")
  assert resnet.create_model("resnet10", 10, width=4, conv="xla").conv_fn is None
  assert resnet.create_model("resnet10", 10, width=4, conv="gemm").conv_fn is \
      conv.conv_general_dilated
  with pytest.raises(UserError, match="model.conv 'fast'.*auto, xla, gemm"):
    resnet.create_model("resnet10", 10, conv="fast")
