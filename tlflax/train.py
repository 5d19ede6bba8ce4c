"""One training phase: optimizer, initialisation, freeze policies and the epoch loop (`fit`).

The per-shard steps it runs live in `steps.py`; where arrays live and how the steps run over the
devices, in `parallel.py`.
"""

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tlflax import checkpoint as checkpoint_lib
from tlflax import data as data_lib
from tlflax import models, parallel, probe, steps, transfer
from tlflax.errors import UserError, require
from tlflax.monitor import MetricsWriter, Progress, read_metrics

# ------------------------------------------------------------------------------------------------
# Optimizer
# ------------------------------------------------------------------------------------------------


def learning_rate_schedule(phase, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 over `warmup_epochs`, then cosine decay to 0 at the last step."""
  total = phase.epochs * steps_per_epoch
  warmup = min(round(phase.warmup_epochs * steps_per_epoch), total - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=phase.learning_rate, warmup_steps=warmup,
      decay_steps=total, end_value=0.0)


def make_optimizer(phase, steps_per_epoch: int, labels=None, lr_factors=None
                   ) -> optax.GradientTransformation:
  """SGD (nesterov momentum) with weight decay added to the gradient, as PyTorch's SGD does.

  With `labels` ('trainable' / 'frozen' per parameter, see `transfer.trainable_labels`) the
  optimizer is an `optax.partition`: frozen parameters get zero updates and hold no state, and
  clipping and weight decay see only trainable ones. `lr_factors` scales each update.
  """
  trainable = [optax.clip_by_global_norm(phase.grad_clip_norm)] if phase.grad_clip_norm else []
  trainable += [optax.add_decayed_weights(phase.weight_decay),
                optax.sgd(learning_rate_schedule(phase, steps_per_epoch),
                          momentum=phase.momentum or None,
                          nesterov=phase.nesterov and bool(phase.momentum))]
  tx = optax.chain(*trainable)
  if labels is not None:
    tx = optax.partition({transfer.TRAINABLE: tx, transfer.FROZEN: optax.set_to_zero()}, labels)
  if lr_factors is not None:
    tx = optax.chain(tx, transfer.scale_by_tree(lr_factors))
  return tx


def carry_opt_state(old, template):
  """`template` (a fresh optimizer state) with every leaf that `old` has at the same path and
  shape copied over: parameters that were already trainable keep their momentum and count."""
  old_flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(old)[0]}

  def pick(path, fresh):
    prev = old_flat.get(jax.tree_util.keystr(path))
    return prev if prev is not None and prev.shape == fresh.shape else fresh

  return jax.tree_util.tree_map_with_path(pick, template)


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
  model = models.from_config(model_cfg, num_classes)
  return init_model(model, seed, image_shape)


def variable_shapes(model_cfg, num_classes: int, image_shape) -> dict:
  """ShapeDtypeStructs of the configured model's variables, without computing (or compiling)
  an init."""
  model = models.from_config(model_cfg, num_classes)
  dummy = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), dummy)


# ------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class PhaseResult:
  """What a finished phase hands back: final state, its model, and the metric history."""

  state: steps.TrainState
  model: Any
  history: list[dict]
  summary: dict


def evaluate(eval_fn: Callable, state: steps.TrainState, test_data: dict, rows,
             num_batches: int) -> dict:
  """Covers every test example exactly once: `num_batches` padded, masked batches of one fixed shape,
  `eval_fn(variables, test_data, rows, i)` summing over batch i of the table `rows`."""
  totals = None
  variables = steps.eval_variables(state)
  for i in range(num_batches):
    sums = eval_fn(variables, test_data, rows, i)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = int(totals["count"])
  return {"test_loss": float(totals["loss"]) / count,
          "test_accuracy": float(totals["correct"]) / count,
          "test_top5": float(totals["correct_top5"]) / count,
          "test_count": count}


@dataclasses.dataclass
class _Setup:
  """What one freeze policy fixes: the model's frozen layout, the optimizer, the compiled step."""

  policy: Any
  model: Any
  tx: Any
  features: str | None = None  # cached-probe mode (probe.mode_for), None: steps on images
  step_fn: Callable | None = None
  eval_fn: Callable | None = None


def policy_setup(policy, phase, model_cfg, num_classes, params, transfer_cfg, steps_per_epoch,
               note) -> _Setup:
  """Builds model and optimizer for a freeze policy (policy 'none' without transfer: plain SGD)."""
  num_stages = models.num_stages(model_cfg.name)
  labels = transfer.trainable_labels(params, policy, num_stages)
  layout = transfer.frozen_layout(labels, num_stages,
                                  transfer_cfg.frozen_bn if transfer_cfg else "running")
  factors = None
  if transfer_cfg is not None and (transfer_cfg.lr_mult or transfer_cfg.layer_decay != 1.0):
    factors = transfer.lr_multipliers(params, transfer_cfg.lr_mult, transfer_cfg.layer_decay,
                                      num_stages)
  model = models.from_config(model_cfg, num_classes, **layout)
  tx = make_optimizer(phase, steps_per_epoch, labels, factors)
  if transfer_cfg is not None or policy != "none":
    flat = transfer.flatten(labels)
    frozen = [p for p, v in flat.items() if v == transfer.FROZEN]
    note(f"freeze {policy!r}: {len(frozen)} of {len(flat)} parameter arrays frozen, "
         f"{len(layout['frozen_bn'])} BatchNorms on running averages, backward pass stops "
         f"after {layout['stop_gradient_units']} leading units")
  return _Setup(policy, model, tx)


def fit(phase, model_cfg, task: data_lib.Task, run_dir: str, seed: int, *, placement=None,
        transfer_cfg=None, variables=None, checkpoint_cfg=None, log_every_steps: int = 50,
        eval_every_epochs: int = 1, label: str = "") -> PhaseResult:
  """Trains on `task` for `phase.epochs`, evaluating, checkpointing and writing metrics to
  `run_dir`. A run folder that already holds checkpoints is resumed from the latest one and
  continues exactly as if it had not stopped.

  Order of initialisation: a checkpoint in `run_dir` (resume) wins; otherwise `variables` (e.g.
  restored and merged from a source model for transfer); otherwise a fresh init from `seed`.
  `placement` (default: every device, shard_map) decides where arrays live and how steps run;
  process 0 alone writes metrics and shows progress.
  """
  t_start = time.perf_counter()
  placement = placement or parallel.Placement.create()
  main = parallel.is_main_process()
  n_train = len(task.train)
  batch_size = phase.batch_size
  require(batch_size <= n_train,
          f"batch_size {batch_size} exceeds the {n_train} training examples of {task.name}: "
          f"lower batch_size or widen train_split")
  placement.check_batch(batch_size, "batch_size")
  steps_per_epoch = n_train // batch_size
  checkpoint_cfg = checkpoint_cfg or {}
  schedule = learning_rate_schedule(phase, steps_per_epoch)
  progress = Progress(label, phase.epochs, steps_per_epoch, batch_size, log_every_steps,
                      quiet=not main)

  # --- Data on the devices: a full copy on each; each device builds its part of a batch -------
  root_key = jax.random.key(seed)
  train_data, test_data, eval_rows, eval_steps = place_data(placement, task,
                                                             phase.eval_batch_size)

  # --- Fresh state, or the latest checkpoint of this run ----------------------------------------
  base_model = models.from_config(model_cfg, task.num_classes)
  dtype = models.resolve_dtype(model_cfg.dtype)
  ckpts = checkpoint_lib.RunCheckpoints(os.path.join(run_dir, "checkpoints"),
                                        keep=checkpoint_cfg.get("keep", 2),
                                        keep_best=checkpoint_cfg.get("keep_best", True),
                                        async_save=checkpoint_cfg.get("async_save", True))
  latest = ckpts.latest_step()
  image_shape = task.train.images.shape[1:]
  if variables is None and latest is None:
    variables = placement.replicate(init_variables(model_cfg, task.num_classes, image_shape,
                                                   seed))
  # Rules read only paths and shapes, so a resumed run needs no init at all.
  shapes = (jax.eval_shape(lambda: variables) if variables is not None
            else variable_shapes(model_cfg, task.num_classes, image_shape))
  new_setup = functools.partial(policy_setup, phase=phase, model_cfg=model_cfg,
                                num_classes=task.num_classes, params=shapes["params"],
                                transfer_cfg=transfer_cfg, steps_per_epoch=steps_per_epoch,
                                note=progress.note)
  ckpt_every = checkpoint_cfg.get("every_epochs", 1)
  writer = None
  try:
    setup, start_epoch, history = None, 0, []
    if latest is not None:
      done = ckpts.data_state(latest)
      if (done["steps_per_epoch"], done["train_examples"]) != (steps_per_epoch, n_train):
        raise UserError(f"{run_dir} was checkpointed with {done['train_examples']} training "
                        f"examples in {done['steps_per_epoch']} steps/epoch, not {n_train} in "
                        f"{steps_per_epoch}: use another --workdir or restore that data config")
      setup = new_setup(transfer.policy_at(transfer_cfg, done["epoch"] - 1))
      target = placement.abstract(jax.eval_shape(
          lambda: steps.create_train_state(setup.tx, shapes)))  # onto today's devices
      state, root_key, done = ckpts.restore(latest, target)
      start_epoch = done["epoch"]
      history = [r for r in read_metrics(run_dir) if r["epoch"] <= start_epoch]
      if main:
        _rewrite_metrics(run_dir, history)  # later records belonged to the lost part of the run
      progress.note(f"resuming from {ckpts.directory}/{latest} (epoch {start_epoch}, "
                    f"step {latest})")
    elif main and read_metrics(run_dir):
      _rewrite_metrics(run_dir, [])  # stopped before its first checkpoint: start over
    _, order_key, aug_key = jax.random.split(root_key, 3)
    train_data["aug_key"] = placement.replicate(np.asarray(jax.random.key_data(aug_key)))

    writer = MetricsWriter(run_dir) if main else None
    cache = probe.FeatureCache(placement, base_model, phase, train_data, test_data, eval_rows)
    compile_s = 0.0
    progress.note(f"{task.name}: {n_train} train / {len(task.test)} test examples, "
                  f"{task.num_classes} classes, {steps_per_epoch} steps/epoch of {batch_size} "
                  f"over {placement.num_devices} devices, {count_params(shapes['params']):,} "
                  f"params, {dtype} compute")
    train_s = 0.0
    for epoch in range(start_epoch, phase.epochs):
      policy = transfer.policy_at(transfer_cfg, epoch)
      rows = placement.rows(data_lib.epoch_rows(order_key, epoch, n_train, batch_size))
      if setup is None or setup.step_fn is None or policy != setup.policy:
        t_compile = time.perf_counter()
        if setup is None:
          setup = new_setup(policy)
          state = placement.jit_replicated(
              functools.partial(steps.create_train_state, setup.tx))(variables)
          variables = None  # the state holds them now
        elif policy != setup.policy:
          setup = new_setup(policy)
          state = state.replace(opt_state=carry_opt_state(
              state.opt_state, placement.jit_replicated(setup.tx.init)(state.params)))
        setup.features = probe.mode_for(transfer_cfg, policy)
        if setup.features:
          progress.note(f"cached linear probe ({setup.features} features): the head trains on "
                        "the frozen backbone's features")
        compile_steps(setup, placement, phase, state, train_data, rows, cache, base_model)
        compile_s += time.perf_counter() - t_compile
        progress.note(f"compiled train and eval steps in {time.perf_counter() - t_compile:.1f}s")

      t_epoch = time.perf_counter()
      step_data = (cache.train(state, setup.features, rows, epoch * steps_per_epoch)
                   if setup.features else train_data)
      if setup.features == "fixed":  # computed once per run: counted in features_s, not here
        t_epoch = time.perf_counter()
      state, sums = _train_epoch(setup.step_fn, state, step_data, rows, epoch, steps_per_epoch,
                                 progress)
      epoch_s = time.perf_counter() - t_epoch
      train_s += epoch_s
      train_loss = float(sums["loss"]) / steps_per_epoch
      progress.end_epoch(train_loss)

      last = epoch + 1 == phase.epochs
      record = None
      if (epoch + 1) % eval_every_epochs == 0 or last:
        record = {"epoch": epoch + 1, "step": int(state.step), "train_loss": train_loss,
                  "train_accuracy": float(sums["accuracy"]) / steps_per_epoch,
                  **evaluate(setup.eval_fn, state,
                             cache.test(state) if setup.features else test_data, eval_rows,
                             eval_steps),
                  "learning_rate": float(schedule(int(state.step) - 1)),
                  "epoch_s": epoch_s, "img_per_s": steps_per_epoch * batch_size / epoch_s,
                  "wall_s": time.perf_counter() - t_start}
        if writer is not None:
          writer.write(record)
        history.append(record)
        progress.note(f"epoch {epoch + 1}: train_loss {train_loss:.4f} test_loss "
                      f"{record['test_loss']:.4f} test_acc {record['test_accuracy']:.4f} "
                      f"top5 {record['test_top5']:.4f} ({record['img_per_s']:.0f} img/s)")
      if (epoch + 1) % ckpt_every == 0 or last:
        ckpts.save(state, root_key, {
            "epoch": epoch + 1, "steps_per_epoch": steps_per_epoch, "train_examples": n_train,
            "policy": repr(policy)},
            metrics={"test_accuracy": record["test_accuracy"]} if record else None)
  finally:
    ckpts.close()
    if writer is not None:
      writer.close()
  summary = {"dataset": task.name, "num_classes": task.num_classes, "train_examples": n_train,
             "test_examples": len(task.test), "params": count_params(state.params),
             **placement.describe(),
             "dtype": dtype,
             "compile_s": compile_s, "train_s": train_s, "features_s": cache.seconds,
             "resumed_from_epoch": start_epoch,
             "wall_s": time.perf_counter() - t_start,
             "mean": task.mean.tolist(), "std": task.std.tolist(),
             "final": history[-1] if history else None}
  return PhaseResult(state, base_model, history, summary)


def step_functions(setup: _Setup, placement, phase, base_model) -> tuple[Callable, Callable]:
  """The setup's train step `(state, sums, data, rows)` and eval step `(variables, data, rows,
  index)`, jitted over the placement's devices: on images, or on cached features for a cached
  linear probe (`setup.features`)."""
  if setup.features:
    train_fn, eval_fn = probe.train_step, probe.eval_step
  else:
    train_fn = functools.partial(steps.train_step_on_data, crop_padding=phase.crop_padding,
                                 flip=phase.flip)
    eval_fn = steps.eval_step_on_data
  train_fn = placement.spmd(functools.partial(
      steps.accumulating(train_fn), model=setup.model, tx=setup.tx,
      label_smoothing=phase.label_smoothing), 4, split=(3,), donate=(0, 1))
  return train_fn, placement.spmd(functools.partial(eval_fn, model=base_model), 4, split=(2,))


def compile_steps(setup: _Setup, placement, phase, state, train_data, rows, cache, base_model
                  ) -> None:
  """Compiles the setup's train and eval steps ahead of the epoch, so img/s measures training,
  not compilation."""
  train_fn, eval_fn = step_functions(setup, placement, phase, base_model)
  if setup.features:
    abstract = cache.compile(state, setup.features, rows)
    step_data, eval_data = abstract["train"], abstract["test"]
  else:
    step_data, eval_data = train_data, cache.test_data
  setup.step_fn = train_fn.lower(state, steps.zero_metrics(), step_data, rows).compile()
  setup.eval_fn = eval_fn.lower(steps.eval_variables(state), eval_data, cache.eval_rows,
                                0).compile()


def place_data(placement, task: data_lib.Task, eval_batch_size: int):
  """The train and test splits replicated on every device, and the table of evaluation batches
  (the test split padded to whole batches of a multiple of the device count)."""
  train_data = placement.replicate(data_lib.device_data(task.train, task.mean, task.std))
  eval_bs = placement.round_up(min(eval_batch_size, len(task.test)))
  test = data_lib.pad_for_eval(task.test, eval_bs)
  test_data = placement.replicate(data_lib.device_data(test, task.mean, task.std))
  eval_steps = len(test) // eval_bs
  eval_rows = placement.rows(np.arange(len(test), dtype=np.int32).reshape(eval_steps, eval_bs))
  return train_data, test_data, eval_rows, eval_steps


def _train_epoch(step_fn, state, train_data, rows, epoch, steps_per_epoch, progress
                 ) -> tuple[steps.TrainState, dict]:
  """One epoch of steps over the batches of `rows` (the step picks its batch from state.step).

  One dispatch a step: the step adds its metrics to the sums it carries on the device, and the
  host reads them only for a progress line and at the end of the epoch.
  """
  sums = steps.zero_metrics()
  progress.start_epoch(epoch)
  for i in range(steps_per_epoch):
    state, sums = step_fn(state, sums, train_data, rows)
    if progress.wants_update(i):
      progress.update(i + 1, float(sums["loss"]) / (i + 1))
  return state, jax.device_get(sums)


def _rewrite_metrics(run_dir: str, records: list[dict]) -> None:
  path = os.path.join(run_dir, "metrics.jsonl")
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in records)
  os.replace(path + ".tmp", path)


def count_params(params) -> int:
  """Number of scalar parameters in a tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
