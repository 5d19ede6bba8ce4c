"""ResNet parameter counts, shapes, names and dtype handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlflax import config as config_lib
from tlflax.errors import UserError
from tlflax.models import resnet


def _shapes(model, size=32):
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("factory,classes,expected", [
    (resnet.ResNet18, 10, 11_173_962), (resnet.ResNet18, 100, 11_220_132),
    (resnet.ResNet34, 10, 21_282_122), (resnet.ResNet10, 10, 4_903_242)])
def test_parameter_counts(factory, classes, expected):
  assert _count(_shapes(factory(classes))["params"]) == expected


def test_parameter_paths_name_stem_stages_and_head():
  params = _shapes(resnet.ResNet18(10, width=8))["params"]
  assert set(params) == {"stem_conv", "stem_bn", "head"} | {
      f"stage{i}_block{j}" for i in range(1, 5) for j in (1, 2)}
  assert "proj_conv" in params["stage2_block1"] and "proj_conv" not in params["stage1_block1"]
  assert params["head"]["kernel"].shape == (64, 10)  # width 8 -> 8 * 2**3 features


def test_output_shape_and_float32_params_for_any_dtype():
  for dtype in (jnp.float32, jnp.bfloat16):
    model = resnet.ResNet18(7, width=4, dtype=dtype)
    x = jnp.ones((3, 16, 16, 3))
    variables = resnet.init_model(model, jax.random.key(0), x.shape[1:])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables))
    logits, inter = model.apply(variables, x, capture_intermediates=True)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    # compute precision follows `dtype`: the stem convolution's output has that dtype
    assert inter["intermediates"]["stem_conv"]["__call__"][0].dtype == dtype


def test_train_mode_updates_batch_stats_and_eval_mode_does_not():
  model = resnet.ResNet18(3, width=4)
  x = jax.random.normal(jax.random.key(1), (4, 16, 16, 3))
  variables = resnet.init_model(model, jax.random.key(0), x.shape[1:])
  _, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables, x)
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"],
                       updates["batch_stats"])
  assert all(jax.tree.leaves(moved))
  evaluate = jax.jit(model.apply)
  a = evaluate(variables, x)
  b = evaluate(variables, x[:1])
  np.testing.assert_allclose(a[:1], b, atol=1e-5)  # eval: no dependence on the rest of the batch


@pytest.mark.parametrize("kwargs", [{"name": "vgg"}, {"name": "resnet18", "dtype": "int8"},
                                    {"name": "resnet18", "width": 0}])
def test_bad_model_config_is_a_user_error(kwargs):
  with pytest.raises(UserError):
    resnet.create_model(num_classes=10, **kwargs)


def test_auto_dtype_is_float32_on_cpu_float16_scales_its_loss_and_others_are_refused():
  assert jax.default_backend() == "cpu"
  assert resnet.resolve_dtype("auto") == "float32"
  assert resnet.create_model("resnet18", 10, width=4, dtype="auto").dtype == jnp.float32
  assert resnet.resolve_dtype("bfloat16") == "bfloat16"
  assert resnet.create_model("resnet18", 10, width=4, dtype="float16").dtype == jnp.float16
  assert resnet.loss_scaling(config_lib.model_config(dtype="float16"))
  assert not resnet.loss_scaling(config_lib.model_config(dtype="bfloat16"))
  with pytest.raises(UserError, match="unknown model.dtype 'float64': choose one of auto, "):
    resnet.create_model("resnet18", 10, dtype="float64")
