"""Cached linear probe: the frozen backbone's features computed once, only the head trained on them.

With `freeze='backbone'` and `frozen_bn='running'` no backbone weight or BatchNorm statistic
moves, so the pooled features the head sees depend only on the image. `cache_features='fixed'`
computes them once per dataset (no augmentation) and trains the head on them: a step is one small
matrix product instead of a ResNet forward pass. `cache_features='augmented'` recomputes the
training features once per epoch from that epoch's augmented images, the same images, crops and
flips the uncached probe would see, so it trains exactly as the uncached probe does.

Features are gathered to every device in example order, so a step picks its batch by example
index, as the image steps do; the state, optimizer, checkpoints and metrics are the run's own.

Cached features are valid only for the backbone they came from: each is stored with a bitwise
fingerprint of the backbone's parameters and BatchNorm statistics, and recomputed whenever the
backbone it is asked for has another (a schedule that trained the backbone in between).
"""

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from tlflax.data import batches
from tlflax.errors import UserError
from tlflax.models import resnet
from tlflax.train import steps

_MODES = {"fixed": "fixed", "true": "fixed", "augmented": "augmented", "off": None,
          "false": None}


def mode_for(transfer_cfg, policy) -> str | None:
  """'fixed', 'augmented', or None where the phase trains through the backbone as usual."""
  mode = check_mode(transfer_cfg.cache_features if transfer_cfg is not None else "off")
  if mode is None or policy != "backbone" or transfer_cfg.frozen_bn != "running":
    return None
  return mode


def check_mode(value) -> str | None:
  """The cache mode a config value stands for: 'fixed' (also True), 'augmented', or None ('off',
  also False); anything else is a `UserError`."""
  key = str(value).lower() if isinstance(value, (bool, str)) else None
  if key not in _MODES:
    raise UserError(f"config.transfer.cache_features must be 'fixed', 'augmented' or 'off' "
                    f"(True / False also work), got {value!r}")
  return _MODES[key]


# ------------------------------------------------------------------------------------------------
# Per shard
# ------------------------------------------------------------------------------------------------


def extract_features(variables: dict, data: dict, rows: jax.Array, first_step, *, model,
                     num_examples: int, augment: bool, crop_padding: int = 0, flip: bool = False,
                     axis_name: str | None = None) -> jax.Array:
  """(num_examples, F) float32 features of the examples in the (steps, batch) table `rows`, at
  their example index; examples not in the table, and table entries >= num_examples (padding),
  leave zeros.

  With `augment`, row i is augmented as training step `first_step + i` augments it (see
  `batches.shard_train_batch`); else the images are only normalised. Each shard writes the features
  of its own examples; one sum over the shards at the end gives every device all of them.
  """
  def body(i, out):
    r = rows[i]
    if augment:
      key = jax.random.fold_in(jax.random.wrap_key_data(data["aug_key"]), first_step + i)
      images = batches.shard_train_batch(data, r, key, axis_name=axis_name,
                                          crop_padding=crop_padding, flip=flip)["image"]
    else:
      valid = jnp.minimum(r, num_examples - 1)
      images = batches.normalize(data["images"][valid], data["mean"], data["std"])
    feats = model.apply(variables, images, train=False, features_only=True)
    return out.at[r].set(feats, mode="drop")

  width = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, features_only=True),
                         variables, jax.ShapeDtypeStruct((1,) + data["images"].shape[1:],
                                                         jnp.float32)).shape[-1]
  zeros = steps.per_shard(jnp.zeros((num_examples, width), jnp.float32), axis_name)
  return steps.sum_over(jax.lax.fori_loop(0, rows.shape[0], body, zeros), axis_name)


def train_step(state: steps.TrainState, data: dict, rows: jax.Array, *, model, tx,
               axis_name: str | None = None, label_smoothing: float = 0.0
               ) -> tuple[steps.TrainState, dict]:
  """One step of the head on this shard's cached features of batch `state.step % len(rows)`."""
  r = rows[state.step % rows.shape[0]]
  feats, labels = data["features"][r], data["labels"][r]

  def loss_fn(head_params):
    logits = resnet.head_logits(model, head_params, feats)
    return jnp.mean(steps.cross_entropy(logits, labels, label_smoothing)), logits

  (loss, logits), head_grads = jax.value_and_grad(loss_fn, has_aux=True)(
      steps.per_shard(state.params["head"], axis_name))
  # Only the head's gradient crosses devices; the frozen rest is zero (the optimizer ignores it).
  grads = {**jax.tree.map(jnp.zeros_like, state.params),
           "head": steps.mean_over(head_grads, axis_name)}
  metrics = steps.mean_over(steps.train_metrics(loss, logits, labels), axis_name)
  return steps.apply_gradients(state, grads, tx, None, batch_stats=state.batch_stats,
                               metrics=metrics)


def eval_step(variables: dict, data: dict, rows: jax.Array, index, *, model,
              axis_name: str | None = None) -> dict:
  """`steps.eval_step` on cached features: sums over this shard's part of batch `index`."""
  r = rows[index]
  logits = resnet.head_logits(model, variables["params"]["head"], data["features"][r])
  labels = data["labels"][r]
  return steps.eval_sums(logits, labels, labels >= 0, axis_name)


def backbone_fingerprint(variables: dict) -> jax.Array:
  """One uint32 a leaf of the backbone (every parameter and BatchNorm statistic but the head's):
  the sum over elements of their bits times an odd number per position, modulo 2**32, so any
  change of any single element changes it."""
  def one(x):
    bits = jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32).ravel()
    odd = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) | jnp.uint32(1)
    return jnp.sum(bits * odd, dtype=jnp.uint32)

  leaves = [x for path, x in jax.tree_util.tree_flatten_with_path(variables)[0]
            if "head" not in (getattr(k, "key", None) for k in path)]
  return jnp.stack([one(x) for x in leaves])


# ------------------------------------------------------------------------------------------------
# On the host
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class FeatureCache:
  """The cached features of one phase on the devices of `placement`: the test split's once, the
  training split's once ('fixed') or per epoch ('augmented'), each again whenever the backbone
  differs from the one they were computed with. `seconds` counts computing them (not compiling:
  `compile` does that ahead)."""

  placement: object
  model: object
  phase: object
  train_data: dict
  test_data: dict
  eval_rows: object
  seconds: float = 0.0
  _cached: dict = dataclasses.field(default_factory=dict)
  _fns: dict = dataclasses.field(default_factory=dict)

  def _fixed_rows(self, n: int):
    """All n examples in batches of the evaluation batch size, the last one padded with
    indices >= n (which extract_features skips)."""
    batch = self.placement.round_up(min(self.phase.eval_batch_size, n))
    return self.placement.rows(np.arange(-(-n // batch) * batch, dtype=np.int32
                                         ).reshape(-1, batch))

  def _job(self, name: str, mode: str, rows) -> tuple:
    """(data, rows, augment) of the pass that computes `name` ('train' or 'test') in `mode`."""
    if name == "test":
      return self.test_data, self.eval_rows, False
    if mode == "augmented":
      return self.train_data, rows, True
    if "rows" not in self._cached:
      self._cached["rows"] = self._fixed_rows(len(self.train_data["labels"]))
    return self.train_data, self._cached["rows"], False

  def _fn(self, data, rows, augment: bool):
    key = (len(data["labels"]), rows.shape, augment)
    if key not in self._fns:
      self._fns[key] = self.placement.spmd(functools.partial(
          extract_features, model=self.model, num_examples=len(data["labels"]), augment=augment,
          crop_padding=self.phase.crop_padding, flip=self.phase.flip), 4, split=(2,))
    return key

  def compile(self, state, mode: str, rows) -> dict:
    """Compiles the feature passes of `mode` (training-epoch table `rows`); returns abstract
    {'train': ..., 'test': ...} data to compile the probe's steps against."""
    out = {}
    for name in ("train", "test"):
      data, table, augment = self._job(name, mode, rows)
      key = self._fn(data, table, augment)
      if not isinstance(self._fns[key], jax.stages.Compiled):
        self._fns[key] = self._fns[key].lower(steps.eval_variables(state), data, table,
                                              np.int32(0)).compile()
      feats = self._fns[key].out_info
      out[name] = {"features": jax.ShapeDtypeStruct(feats.shape, feats.dtype,
                                                    sharding=self.placement.replicated),
                   "labels": data["labels"]}
    return out

  def _fingerprint(self, variables) -> np.ndarray:
    if "fingerprint" not in self._fns:
      self._fns["fingerprint"] = jax.jit(backbone_fingerprint)
    return np.asarray(self._fns["fingerprint"](variables))

  def _get(self, name: str, state, mode: str, rows, first_step: int) -> dict:
    data, table, augment = self._job(name, mode, rows)
    variables = steps.eval_variables(state)
    backbone = self._fingerprint(variables)
    cached = self._cached.get(name)
    if augment or cached is None or not np.array_equal(cached["backbone"], backbone):
      t0 = time.perf_counter()
      feats = self._fns[self._fn(data, table, augment)](variables, data, table,
                                                        np.int32(first_step))
      self._cached[name] = {"features": jax.block_until_ready(feats), "labels": data["labels"],
                            "backbone": backbone}
      self.seconds += time.perf_counter() - t0
    return {k: self._cached[name][k] for k in ("features", "labels")}

  def test(self, state) -> dict:
    """Features and labels of the (padded) test split, in the order `eval_rows` reads them."""
    return self._get("test", state, "fixed", None, 0)

  def train(self, state, mode: str, rows, first_step: int) -> dict:
    """Features and labels of the training split for the epoch whose table is `rows` and whose
    first global step is `first_step`: computed once ('fixed') or for this epoch ('augmented')."""
    return self._get("train", state, mode, rows, first_step)
