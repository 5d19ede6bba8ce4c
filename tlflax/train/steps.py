"""Per-shard train and eval steps, and the state they carry.

The steps are pure functions written for one shard: every cross-device mean goes through
`axis_name`, so the same function runs under plain `jax.jit` (axis_name=None, one device) and
under `jax.shard_map` / `jax.pmap` (axis_name='data', see `parallel.py`) without change.
"""

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax.training import dynamic_scale

from tlflax.data import batches


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; the model and optimizer stay outside as statics."""

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  loss_scale: Any = None  # flax's DynamicScale when the model computes in float16, else None


# float16 loss scaling: flax's DynamicScale, starting at 2**15, halved after a step whose gradients
# are not finite (the step is skipped), doubled after 2,000 finite steps in a row, never below 1.
LOSS_SCALE_INIT = 2.0 ** 15
LOSS_SCALE_GROWTH_INTERVAL = 2000


def create_train_state(tx, variables: dict, loss_scaling: bool = False) -> TrainState:
  """Step 0 of training from `variables` (fresh, restored or merged): adds the optimizer state,
  and with `loss_scaling` (float16 compute) a dynamic loss scale."""
  params = variables["params"]
  scale = None
  if loss_scaling:
    scale = dynamic_scale.DynamicScale(
        growth_interval=LOSS_SCALE_GROWTH_INTERVAL, fin_steps=jnp.zeros((), jnp.int32),
        scale=jnp.asarray(LOSS_SCALE_INIT, jnp.float32), minimum_scale=1.0)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    batch_stats=variables.get("batch_stats", {}), opt_state=tx.init(params),
                    loss_scale=scale)

def eval_variables(state: TrainState) -> dict:
  """The variables a forward pass needs."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels, in float32."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
      if label_smoothing else jax.nn.one_hot(labels, num_classes)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def mean_over(x, axis_name):
  return jax.lax.pmean(x, axis_name) if axis_name else x


def sum_over(x, axis_name):
  return jax.lax.psum(x, axis_name) if axis_name else x


def whole_batch(x: jax.Array, axis_name: str | None) -> jax.Array:
  """Per shard: this shard's rows of a batch put at their positions in the global batch
  (`batches.batch_positions`) and summed over the shards, so every device holds the whole batch
  in order."""
  if axis_name is None:
    return x
  size = x.shape[0] * jax.lax.axis_size(axis_name)
  whole = jnp.zeros((size,) + x.shape[1:], x.dtype)
  return sum_over(whole.at[batches.batch_positions(x.shape[0], axis_name)].set(x), axis_name)


def per_shard(tree, axis_name):
  """`tree` typed as differing between shards, so that jax.grad returns this shard's gradient.

  Under `jax.shard_map` (check_vma on), replicated params are typed invariant over the axis, and
  jax.grad with respect to them already returns the SUM of the shards' gradients: a pmean after
  it would leave N times the true gradient on N devices. Differentiating with respect to a
  varying view gives each shard its own gradient, which `mean_over` averages, exactly as under
  `jax.pmap` (where the cast changes nothing) and as plain jit on the whole batch.
  """
  return jax.lax.pcast(tree, axis_name, to="varying") if axis_name else tree


def train_step(state: TrainState, batch: dict, *, model, tx, axis_name: str | None = None,
               label_smoothing: float = 0.0) -> tuple[TrainState, dict]:
  """One SGD step on this shard's batch; gradients and BN statistics are averaged over axis_name."""
  model = model.clone(axis_name=axis_name)

  def loss_fn(params):
    logits, updates = model.apply({"params": params, "batch_stats": state.batch_stats},
                                  batch["image"], train=True, mutable=["batch_stats"])
    loss = jnp.mean(cross_entropy(logits, batch["label"], label_smoothing))
    return loss, (logits, updates["batch_stats"])

  params = per_shard(state.params, axis_name)
  if state.loss_scale is not None:
    return _scaled_step(state, loss_fn, params, batch["label"], tx, axis_name)
  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  return apply_gradients(state, grads, tx, axis_name, batch_stats=batch_stats,
                         metrics=train_metrics(loss, logits, batch["label"]))


def _scaled_step(state: TrainState, loss_fn, params, labels, tx, axis_name
                 ) -> tuple[TrainState, dict]:
  """`train_step` with dynamic loss scaling (float16 compute): the loss is multiplied by the
  scale before the backward pass and the gradients divided by it after, averaged over the axis.
  A step whose gradients are not finite is skipped (params, BatchNorm statistics and optimizer
  state stay as they were, the scale halves); its `skipped` metric is 1. Only a non-finite step
  at the lowest scale (1) counts as divergence."""
  scale, finite, (loss, (logits, batch_stats)), grads = state.loss_scale.value_and_grad(
      loss_fn, has_aux=True, axis_name=axis_name)(params)
  new, metrics = apply_gradients(state, grads, tx, None, batch_stats=batch_stats,
                                 metrics=mean_over(train_metrics(loss, logits, labels), axis_name))
  keep = functools.partial(jax.tree.map, lambda a, b: jnp.where(finite, a, b))
  new = new.replace(params=keep(new.params, state.params),
                    batch_stats=keep(new.batch_stats, state.batch_stats),
                    opt_state=keep(new.opt_state, state.opt_state), loss_scale=scale)
  metrics.update(finite=finite | (state.loss_scale.scale > 1.0),
                 skipped=1.0 - finite.astype(jnp.float32), loss_scale=scale.scale)
  return new, metrics


def train_metrics(loss, logits, labels) -> dict:
  """This shard's mean loss and top-1 accuracy over its batch."""
  return {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}


def apply_gradients(state: TrainState, grads, tx, axis_name: str | None, *, batch_stats,
                    metrics: dict) -> tuple[TrainState, dict]:
  """The next state from this shard's gradients (averaged over `axis_name` first), and the
  metrics averaged likewise."""
  grads = mean_over(grads, axis_name)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state)
  metrics = mean_over(metrics, axis_name)
  # The same on every shard: the loss and the gradients are averaged over the axis already.
  metrics["finite"] = jnp.isfinite(metrics["loss"]) & jnp.isfinite(optax.tree.norm(grads))
  return new_state, metrics


def eval_step(variables: dict, batch: dict, *, model, axis_name: str | None = None) -> dict:
  """Sums of loss, top-1 and top-5 hits and the example count over the masked batch.

  Takes only params and batch_stats, so it does not recompile when the optimizer changes.
  """
  logits = model.apply(variables, batch["image"], train=False)
  return eval_sums(logits, batch["label"], batch["mask"], axis_name)


def eval_sums(logits: jax.Array, labels: jax.Array, mask: jax.Array, axis_name: str | None
              ) -> dict:
  """Sums over the examples where `mask` holds (and over `axis_name`): loss, top-1 and top-5
  hits, count."""
  labels = jnp.where(mask, labels, 0)
  loss = cross_entropy(logits, labels)
  k = min(5, logits.shape[-1])
  top5 = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
  sums = {
      "loss": jnp.sum(jnp.where(mask, loss, 0.0)),
      "correct": jnp.sum(mask & (jnp.argmax(logits, -1) == labels)),
      "correct_top5": jnp.sum(mask & top5),
      "count": jnp.sum(mask),
  }
  return sum_over(sums, axis_name)


def train_step_on_data(state: TrainState, data: dict, rows: jax.Array, *, model, tx,
                       axis_name: str | None = None, label_smoothing: float = 0.0,
                       crop_padding: int = 0, flip: bool = False) -> tuple[TrainState, dict]:
  """Per shard: builds this shard's part of batch `state.step % len(rows)` of the epoch from the
  dataset on the device, then takes one `train_step`.

  `rows` is this shard's block of the epoch's (steps, batch) table of example indices; the
  augmentation key of global step s is fold_in(data['aug_key'], s), so a resumed run replays it.
  """
  key = jax.random.fold_in(jax.random.wrap_key_data(data["aug_key"]), state.step)
  batch = batches.shard_train_batch(data, rows[state.step % rows.shape[0]], key,
                                     axis_name=axis_name, crop_padding=crop_padding, flip=flip)
  return train_step(state, batch, model=model, tx=tx, axis_name=axis_name,
                    label_smoothing=label_smoothing)


def eval_step_on_data(variables: dict, data: dict, rows: jax.Array, index, *, model,
                      axis_name: str | None = None) -> dict:
  """Per shard: `eval_step` on this shard's part of evaluation batch `index`."""
  return eval_step(variables, batches.shard_eval_batch(data, rows[index]), model=model,
                   axis_name=axis_name)


def as_on_device(data: dict, batch: dict) -> tuple[dict, jax.Array]:
  """A streamed batch (this shard's (1, b, ...) columns) as the on-device data of `b` examples
  and a one-row table of their rows, so the `_on_data` steps take it unchanged."""
  local = {**data, "images": batch["images"][0], "labels": batch["labels"][0]}
  return local, jnp.arange(batch["labels"].shape[1])[None]


def train_step_on_batch(state: TrainState, data: dict, batch: dict, **kwargs
                        ) -> tuple[TrainState, dict]:
  """Per shard: `train_step_on_data` on a batch streamed from the host (`data/feeds.py`): `batch`
  holds this shard's examples of the global batch, `data` the normalisation and `aug_key`. Each
  example gets the augmentation key of its position in the global batch, as on the device path."""
  return train_step_on_data(state, *as_on_device(data, batch), **kwargs)


def eval_step_on_batch(variables: dict, data: dict, batch: dict, index, **kwargs) -> dict:
  """Per shard: `eval_step_on_data` on a streamed evaluation batch (`index` is unused, 0)."""
  del index
  return eval_step_on_data(variables, *as_on_device(data, batch), 0, **kwargs)


def zero_metrics() -> dict:
  """Sums of the train metrics before an epoch's first step; `nonfinite_step` is the first global
  step whose loss or gradients were not finite (-1: none yet); `skipped` counts the steps that
  float16 loss scaling skipped (their loss and accuracy are not added: a mean divides by the
  steps counted, `counted`), `loss_scale` is the scale after the last step, the one the next
  step uses (0: no scaling)."""
  return {"loss": jnp.zeros((), jnp.float32), "accuracy": jnp.zeros((), jnp.float32),
          "skipped": jnp.zeros((), jnp.float32), "loss_scale": jnp.zeros((), jnp.float32),
          "nonfinite_step": jnp.full((), -1, jnp.int32)}


def counted(steps: int, skipped: float) -> int:
  """The steps whose metrics an epoch's sums hold: `steps` less those loss scaling skipped."""
  return steps - round(float(skipped))


def mean_of(total, steps: int, skipped: float = 0.0) -> float:
  """A summed metric over the steps it counts (NaN when loss scaling skipped every one)."""
  n = counted(steps, skipped)
  return float(total) / n if n > 0 else float("nan")


def accumulating(step: Callable) -> Callable:
  """`step(state, data, rows, **kw)` as `(state, sums, data, rows, **kw) -> (state, sums +
  metrics)`: an epoch sums its metrics on the device, one dispatch a step, and remembers the
  first step that went non-finite (the host looks now and then, see
  `epochs.Trainer.train_epoch`)."""
  @functools.wraps(step)
  def run(state, sums, data, rows, **kwargs):
    new_state, metrics = step(state, data, rows, **kwargs)
    first = sums["nonfinite_step"]
    bad = (first < 0) & ~metrics["finite"]
    skipped = metrics.get("skipped", 0.0)
    add = lambda key: sums[key] + jnp.where(skipped > 0, 0.0, metrics[key])
    return new_state, {
        "loss": add("loss"), "accuracy": add("accuracy"),
        "skipped": sums["skipped"] + skipped,
        "loss_scale": metrics.get("loss_scale", sums["loss_scale"]).astype(jnp.float32),
        "nonfinite_step": jnp.where(bad, new_state.step, first)}
  return run
