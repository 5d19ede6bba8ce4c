"""One training phase: optimizer, initialisation, freeze policies and the epoch loop (`fit`).

The per-shard steps it runs live in `steps.py`; where arrays live and how the steps run over the
devices, in `parallel.py`.
"""

import dataclasses
import functools
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
from tlflax import models, monitor, parallel, pipeline, preemption, probe, steps, transfer
from tlflax.errors import DIVERGED, Stopped, UserError, require
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


def evaluate(eval_fn: Callable, state: steps.TrainState, parts: dict, batches: Callable) -> dict:
  """Covers every evaluation example exactly once: padded, masked batches of one fixed shape,
  `eval_fn(variables, *args)` summing over one batch for each `args` of `batches(first, last)`.

  `parts` maps a split name ('test', 'val') to its [first, last) batches of the evaluation table
  (see `pipeline.place_data`). Returns `{name}_loss`, `_accuracy`, `_top5`, `_count` for each.
  """
  variables = steps.eval_variables(state)
  out = {}
  for name, (first, last) in parts.items():
    totals = None
    for args in batches(first, last):
      sums = eval_fn(variables, *args)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = int(totals["count"])
    out.update({f"{name}_loss": float(totals["loss"]) / count,
                f"{name}_accuracy": float(totals["correct"]) / count,
                f"{name}_top5": float(totals["correct_top5"]) / count,
                f"{name}_count": count})
  return out


def scheduled(phase, steps_per_epoch: int):
  """`phase` with `epochs` raised so that training takes at least `min_steps` steps (a copy; the
  phase itself when nothing changes)."""
  epochs = max(phase.epochs, -(-phase.get("min_steps", 0) // steps_per_epoch))
  if epochs == phase.epochs:
    return phase
  out = phase.copy_and_resolve_references()
  out.epochs = epochs
  return out


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


@dataclasses.dataclass
class _Position:
  """Where a run stands: the state, and how far into `epoch` it is (for a resume or a stop)."""

  state: Any
  epoch: int = 0  # the epoch being trained (0-based); `step_in_epoch` of its steps are done
  step_in_epoch: int = 0
  sums: dict | None = None  # the epoch's metric sums so far (host floats), None at its start
  seconds: dict = dataclasses.field(  # wall, train, compile and load time of earlier attempts
      default_factory=lambda: dict.fromkeys(_SECONDS, 0.0))


_SECONDS = ("wall_s", "train_s", "compile_s", "load_s")


def fit(phase, model_cfg, task: data_lib.Task, run_dir: str, seed: int, *, placement=None,
        transfer_cfg=None, variables=None, checkpoint_cfg=None, log_every_steps: int = 50,
        eval_every_epochs: int = 1, label: str = "", data_cfg=None,
        hparams: dict | None = None, started: float | None = None) -> PhaseResult:
  """Trains on `task` for `phase.epochs`, evaluating, checkpointing and writing metrics to
  `run_dir`. A run folder that already holds checkpoints is resumed from the latest one that
  restores, mid-epoch if that is where it stopped, and continues exactly as if it had not stopped.

  Order of initialisation: a checkpoint in `run_dir` (resume) wins; otherwise `variables` (e.g.
  restored and merged from a source model for transfer); otherwise a fresh init from `seed`.
  `placement` (default: every device, shard_map) decides where arrays live and how steps run;
  `data_cfg` (config.data) whether the splits live on the devices or stream from the host
  (`pipeline.py`); process 0 alone writes metrics (and `hparams` for TensorBoard) and shows
  progress.

  Stops early with `errors.Stopped`: after a SIGTERM/SIGINT (`preemption`), with a checkpoint of
  the last step; or on non-finite loss or gradients, saving nothing of them.

  `started` (a `time.perf_counter()` reading): when the run's work began, before its data was
  loaded and its source restored; `wall_s` counts from there, and `load_s` is the part before
  `fit`.
  """
  t_fit = time.perf_counter()
  t_start = t_fit if started is None else started
  placement = placement or parallel.Placement.create()
  main = parallel.is_main_process()
  n_train = len(task.train)
  batch_size = phase.batch_size
  require(batch_size <= n_train,
          f"batch_size {batch_size} exceeds the {n_train} training examples of {task.name}: "
          f"lower batch_size or widen train_split")
  placement.check_batch(batch_size, "batch_size")
  steps_per_epoch = n_train // batch_size
  asked_epochs, phase = phase.epochs, scheduled(phase, steps_per_epoch)
  checkpoint_cfg = checkpoint_cfg or {}
  schedule = learning_rate_schedule(phase, steps_per_epoch)
  progress = Progress(label, phase.epochs, steps_per_epoch, batch_size, log_every_steps,
                      quiet=not main)
  if phase.epochs != asked_epochs:
    progress.note(f"{n_train} training examples make {steps_per_epoch} steps/epoch: "
                  f"{phase.epochs} epochs instead of {asked_epochs}, for min_steps="
                  f"{phase.min_steps}")

  # --- Data on the devices (a full copy on each; each device builds its part of a batch), or
  # --- streamed from the host batch by batch when it does not fit them -------------------------
  feed = pipeline.make_feed(data_cfg, placement, task, phase.eval_batch_size, progress.note)

  # --- Fresh state, or the latest checkpoint of this run ----------------------------------------
  base_model = models.from_config(model_cfg, task.num_classes)
  dtype = models.resolve_dtype(model_cfg.dtype)
  ckpts = checkpoint_lib.RunCheckpoints(os.path.join(run_dir, "checkpoints"),
                                        keep=checkpoint_cfg.get("keep", 2),
                                        keep_best=checkpoint_cfg.get("keep_best", True),
                                        async_save=checkpoint_cfg.get("async_save", True))
  image_shape = task.train.images.shape[1:]
  resuming = bool(ckpts.all_steps())

  def fresh_variables():
    return placement.replicate(init_variables(model_cfg, task.num_classes, image_shape, seed))

  if variables is None and not resuming:
    variables = fresh_variables()
  # Rules read only paths and shapes, so a resumed run needs no init at all.
  shapes = (jax.eval_shape(lambda: variables) if variables is not None
            else variable_shapes(model_cfg, task.num_classes, image_shape))
  new_setup = functools.partial(policy_setup, phase=phase, model_cfg=model_cfg,
                                num_classes=task.num_classes, params=shapes["params"],
                                transfer_cfg=transfer_cfg, steps_per_epoch=steps_per_epoch,
                                note=progress.note)
  ckpt_every = checkpoint_cfg.get("every_epochs", 1)
  ckpt_every_steps = checkpoint_cfg.get("every_steps", 0)
  writer = None
  try:
    setup, root_key, history = None, jax.random.key(seed), []
    at = _Position(state=None)
    restored = _restore(ckpts, run_dir, new_setup, shapes, placement, transfer_cfg,
                        steps_per_epoch, n_train) if resuming else None
    if restored is not None:
      setup, root_key, at = restored
      resumed_step = int(at.state.step)
      history = [r for r in read_metrics(run_dir) if r["epoch"] <= at.epoch]
      if main:
        monitor.truncate_metrics(run_dir, at.epoch)  # later records were rolled back
      progress.note(f"resuming from {ckpts.directory}/{resumed_step} "
                    + _position_text(at.epoch, at.step_in_epoch, steps_per_epoch))
    else:
      if resuming and transfer_cfg is not None:  # its start is the source's, not a fresh init
        raise UserError(f"no checkpoint in {ckpts.directory} could be restored (moved to "
                        "corrupt_checkpoints/): rerun the same command to start this transfer "
                        "run over from its source")
      if variables is None:  # every checkpoint failed to restore: start over
        variables = fresh_variables()
      if main and read_metrics(run_dir):
        monitor.truncate_metrics(run_dir, 0)  # stopped before its first checkpoint: start over
    state = at.state
    _, order_key, aug_key = jax.random.split(root_key, 3)
    feed.train_data["aug_key"] = placement.replicate(np.asarray(jax.random.key_data(aug_key)))

    writer = MetricsWriter(run_dir, history if restored is not None else None,
                           resumed_step if restored is not None else 0, hparams) if main else None
    cache = probe.FeatureCache(placement, base_model, phase, feed.train_data, feed.eval_data,
                               feed.eval_rows)
    seconds = dict(at.seconds)
    seconds["load_s"] += t_fit - t_start

    def elapsed() -> dict:
      return {**seconds, "wall_s": seconds["wall_s"] + time.perf_counter() - t_start}

    def save(epoch: int, step_in_epoch: int, sums, metrics=None) -> str:
      """Checkpoints `state`: `epoch` (0-based) is the epoch being trained, `step_in_epoch` of
      its steps are done (== steps_per_epoch: trained, not yet evaluated)."""
      host = jax.device_get(sums)
      if int(host["nonfinite_step"]) >= 0:
        raise _NonFinite(int(host["nonfinite_step"]))  # never save a diverged state
      ckpts.save(state, root_key, {
          "epoch": epoch, "step_in_epoch": step_in_epoch,
          "sums": {k: float(v) for k, v in host.items() if k != "nonfinite_step"},
          "steps_per_epoch": steps_per_epoch, "train_examples": n_train,
          "policy": repr(transfer.policy_at(transfer_cfg, _policy_epoch(epoch, step_in_epoch))),
          **elapsed()}, metrics=metrics)
      return f"{ckpts.directory}/{int(state.step)}"

    progress.note(f"{task.name}: {n_train} train / {len(task.test)} test examples, "
                  f"{task.num_classes} classes, {steps_per_epoch} steps/epoch of {batch_size} "
                  f"over {placement.num_devices} devices, {count_params(shapes['params']):,} "
                  f"params, {dtype} compute")
    def log_window(step: int, window: dict) -> None:
      if writer is not None:
        writer.write_step({"step": step, **window,
                           "learning_rate": float(schedule(step - 1))})

    for epoch in range(at.epoch, phase.epochs):
      policy = transfer.policy_at(transfer_cfg, epoch)
      rows = feed.epoch(data_lib.epoch_rows(order_key, epoch, n_train, batch_size))
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
        if setup.features and feed.name == "stream":
          progress.note("the cached linear probe needs the data on the devices: streamed, the "
                        "head trains on images through the frozen backbone")
          setup.features = None
        if setup.features:
          progress.note(f"cached linear probe ({setup.features} features): the head trains on "
                        "the frozen backbone's features")
        compile_steps(setup, placement, phase, state, base_model, cache, rows,
                      *feed.example_args(rows, batch_size), streamed=feed.name == "stream")
        seconds["compile_s"] += time.perf_counter() - t_compile
        progress.note(f"compiled train and eval steps in {time.perf_counter() - t_compile:.1f}s")

      t_epoch = time.perf_counter()
      step_data = (cache.train(state, setup.features, rows, epoch * steps_per_epoch)
                   if setup.features else None)
      if setup.features == "fixed":  # computed once per run: counted in features_s, not here
        t_epoch = time.perf_counter()
      first = at.step_in_epoch if epoch == at.epoch else 0
      sums = steps.zero_metrics() if first == 0 else _device_sums(at.sums)
      batches = feed.train_batches(rows, first, step_data)
      try:
        epoch_steps = _train_epoch(setup.step_fn, state, batches, epoch, steps_per_epoch,
                                   progress, first, sums, log_window)
        for state, sums, done in epoch_steps:
          step = epoch * steps_per_epoch + done
          if preemption.should_stop(step):
            seconds["train_s"] += time.perf_counter() - t_epoch
            _stopped(run_dir, save(epoch, done, sums), step, epoch, done, steps_per_epoch, ckpts)
          if ckpt_every_steps and step % ckpt_every_steps == 0 and done < steps_per_epoch:
            save(epoch, done, sums)
      except _NonFinite as e:
        _diverged(run_dir, e.step, epoch, ckpts)
      sums = jax.device_get(sums)
      epoch_s = time.perf_counter() - t_epoch
      seconds["train_s"] += epoch_s
      train_loss = float(sums["loss"]) / steps_per_epoch
      progress.end_epoch(train_loss)

      last = epoch + 1 == phase.epochs
      record = None
      if (epoch + 1) % eval_every_epochs == 0 or last:
        record = {"epoch": epoch + 1, "step": int(state.step), "train_loss": train_loss,
                  "train_accuracy": float(sums["accuracy"]) / steps_per_epoch,
                  **evaluate(setup.eval_fn, state, feed.parts, feed.eval_batches(
                      cache.test(state) if setup.features else None)),
                  "learning_rate": float(schedule(int(state.step) - 1)),
                  "epoch_s": epoch_s,
                  "img_per_s": (steps_per_epoch - first) * batch_size / epoch_s,
                  "wall_s": elapsed()["wall_s"]}
        if writer is not None:
          writer.write(record)
        history.append(record)
        val = (f" val_acc {record['val_accuracy']:.4f}" if "val_accuracy" in record else "")
        progress.note(f"epoch {epoch + 1}: train_loss {train_loss:.4f} test_loss "
                      f"{record['test_loss']:.4f} test_acc {record['test_accuracy']:.4f} "
                      f"top5 {record['test_top5']:.4f}{val} ({record['img_per_s']:.0f} img/s)")
      if (epoch + 1) % ckpt_every == 0 or last:
        save(epoch + 1, 0, steps.zero_metrics(),
             metrics={k: record[k] for k in ("test_accuracy", "val_accuracy") if k in record}
             if record else None)
  finally:
    ckpts.close()
    if writer is not None:
      writer.close()
  summary = {"dataset": task.name, "num_classes": task.num_classes, "train_examples": n_train,
             "test_examples": len(task.test),
             "val_examples": len(task.val) if task.val is not None else 0,
             "epochs": phase.epochs, "steps_per_epoch": steps_per_epoch,
             "params": count_params(state.params),
             **placement.describe(),
             "dtype": dtype,
             **elapsed(), "features_s": cache.seconds,
             "resumed_from_epoch": at.epoch if restored is not None else 0,
             "resumed_from_step": resumed_step if restored is not None else 0,
             "mean": task.mean.tolist(), "std": task.std.tolist(),
             "pipeline": feed.name, "class_names": list(task.class_names),
             "final": history[-1] if history else None,
             "selected_on": monitor.selection_key(history).split("_")[0],
             "best": monitor.best_record(history)}
  return PhaseResult(state, base_model, history, summary)


def _restore(ckpts, run_dir, new_setup, shapes, placement, transfer_cfg, steps_per_epoch,
             n_train):
  """(setup, root key, `_Position`) from the newest checkpoint that restores, or None."""
  made = {}

  def target(done: dict):
    if (done["steps_per_epoch"], done["train_examples"]) != (steps_per_epoch, n_train):
      raise UserError(f"{run_dir} was checkpointed with {done['train_examples']} training "
                      f"examples in {done['steps_per_epoch']} steps/epoch, not {n_train} in "
                      f"{steps_per_epoch}: use another --workdir or restore that data config")
    epoch, step_in_epoch = done["epoch"], done.get("step_in_epoch", 0)
    made["setup"] = new_setup(transfer.policy_at(transfer_cfg,
                                                 _policy_epoch(epoch, step_in_epoch)))
    return placement.abstract(jax.eval_shape(
        lambda: steps.create_train_state(made["setup"].tx, shapes)))  # onto today's devices

  out = ckpts.restore_latest(target)
  if out is None:
    return None
  state, root_key, done, _ = out
  epoch, step_in_epoch = done["epoch"], done.get("step_in_epoch", 0)
  seconds = {k: float(done.get(k, 0.0)) for k in _SECONDS}
  return made["setup"], root_key, _Position(state, epoch, step_in_epoch, done.get("sums"),
                                            seconds)


def _position_text(epoch: int, step_in_epoch: int, steps_per_epoch: int) -> str:
  """Where a resumed run continues, in words (`epoch` 0-based)."""
  if step_in_epoch == 0:
    return f"at the start of epoch {epoch + 1}"
  if step_in_epoch == steps_per_epoch:
    return f"after the last step of epoch {epoch + 1}, before its evaluation"
  return f"in epoch {epoch + 1}, after {step_in_epoch} of its {steps_per_epoch} steps"


def _policy_epoch(epoch: int, step_in_epoch: int) -> int:
  """The epoch whose freeze policy shaped a checkpoint's optimizer state: a checkpoint at an
  epoch's end says (next epoch, 0) but carries the state of the epoch before."""
  return epoch if step_in_epoch > 0 else epoch - 1


def _device_sums(host: dict) -> dict:
  """An epoch's metric sums so far, restored from a checkpoint, as the step carries them."""
  zero = steps.zero_metrics()
  return {k: jnp.asarray(host.get(k, zero[k]), zero[k].dtype) if k != "nonfinite_step"
          else zero[k] for k in zero}


class _NonFinite(Exception):
  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


def _stopped(run_dir, checkpoint_path, step, epoch, done, steps_per_epoch, ckpts) -> None:
  """After a SIGTERM/SIGINT: the checkpoint of `step` is saving; waits for it and stops."""
  ckpts.close()
  if parallel.is_main_process():
    monitor.write_event(run_dir, {"event": "interrupted", "signal": preemption.signal_name(),
                                  "step": step, "epoch": epoch + 1, "step_in_epoch": done})
  raise Stopped(f"interrupted by {preemption.signal_name()} after step {step} (epoch {epoch + 1}, "
                f"step {done}/{steps_per_epoch}); saved {checkpoint_path}: rerun the same "
                "command to resume", preemption.exit_code())


def _diverged(run_dir, step, epoch, ckpts) -> None:
  """Non-finite loss or gradients at `step`: records the event and stops, saving nothing."""
  ckpts.close()  # pending saves are of earlier, finite steps
  good = ckpts.all_steps()
  last = f"{ckpts.directory}/{good[-1]}" if good else "none"
  if parallel.is_main_process():
    monitor.write_event(run_dir, {"event": "diverged", "step": step, "epoch": epoch + 1,
                                  "last_checkpoint": last})
  raise Stopped(f"diverged: non-finite loss or gradients at step {step} (epoch {epoch + 1}); "
                f"last good checkpoint: {last}; nothing after it was saved: lower learning_rate "
                f"(or set grad_clip_norm) and start in another --workdir, or move {run_dir} "
                "away", DIVERGED)


def step_functions(setup: _Setup, placement, phase, base_model, streamed: bool = False
                   ) -> tuple[Callable, Callable]:
  """The setup's train step `(state, sums, data, rows)` and eval step `(variables, data, rows,
  index)`, jitted over the placement's devices: on images on the devices, on streamed batches
  (`streamed`: `rows` is the batch itself), or on cached features for a cached linear probe
  (`setup.features`)."""
  if setup.features:
    train_fn, eval_fn = probe.train_step, probe.eval_step
  elif streamed:
    train_fn = functools.partial(steps.train_step_on_batch, crop_padding=phase.crop_padding,
                                 flip=phase.flip)
    eval_fn = steps.eval_step_on_batch
  else:
    train_fn = functools.partial(steps.train_step_on_data, crop_padding=phase.crop_padding,
                                 flip=phase.flip)
    eval_fn = steps.eval_step_on_data
  train_fn = placement.spmd(functools.partial(
      steps.accumulating(train_fn), model=setup.model, tx=setup.tx,
      label_smoothing=phase.label_smoothing), 4, split=(3,), donate=(0, 1))
  return train_fn, placement.spmd(functools.partial(eval_fn, model=base_model), 4, split=(2,))


def compile_steps(setup: _Setup, placement, phase, state, base_model, cache, rows, train_args,
                  eval_args, streamed: bool = False) -> None:
  """Compiles the setup's train and eval steps ahead of the epoch, so img/s measures training,
  not compilation. `train_args` / `eval_args`: what the steps take besides the state (for the
  cached probe, its features replace the data)."""
  train_fn, eval_fn = step_functions(setup, placement, phase, base_model, streamed)
  if setup.features:
    abstract = cache.compile(state, setup.features, rows)
    train_args = (abstract["train"], rows)
    eval_args = (abstract["test"],) + tuple(eval_args[1:])
  setup.step_fn = train_fn.lower(state, steps.zero_metrics(), *train_args).compile()
  setup.eval_fn = eval_fn.lower(steps.eval_variables(state), *eval_args).compile()


def _train_epoch(step_fn, state, batches, epoch, steps_per_epoch, progress, first=0, sums=None,
                 log_window=None):
  """Steps `first`..`steps_per_epoch - 1` of one epoch, step i taking the next `(data, rows)` of
  `batches` (on the device path the whole epoch's table, the step picks its batch from
  state.step); yields (state, sums, steps of the epoch done) after every step.

  One dispatch a step: the step adds its metrics to the sums it carries on the device. The host
  reads them every `log_every_steps` and at the epoch's end, for the progress line, for
  `log_window(global step, window means)` (TensorBoard), and to stop (`_NonFinite`) within the
  epoch once a loss or gradient was not finite.
  """
  sums = steps.zero_metrics() if sums is None else sums
  progress.start_epoch(epoch, first)
  seen = jax.device_get(sums)
  seen_at, seen_t = first, time.perf_counter()
  batch_size = progress.batch_size
  for i, (data, rows) in zip(range(first, steps_per_epoch), batches, strict=False):
    state, sums = step_fn(state, sums, data, rows)
    if (i + 1) % progress.every == 0 or i + 1 == steps_per_epoch:
      host = jax.device_get(sums)
      if int(host["nonfinite_step"]) >= 0:
        raise _NonFinite(int(host["nonfinite_step"]))
      if progress.wants_update(i):
        progress.update(i + 1, float(host["loss"]) / (i + 1))
      now, n = time.perf_counter(), i + 1 - seen_at
      if log_window is not None and n > 0:
        log_window(epoch * steps_per_epoch + i + 1, {
            "train_loss": float(host["loss"] - seen["loss"]) / n,
            "train_accuracy": float(host["accuracy"] - seen["accuracy"]) / n,
            "img_per_s": n * batch_size / max(now - seen_t, 1e-9)})
      seen, seen_at, seen_t = host, i + 1, now
    yield state, sums, i + 1


def count_params(params) -> int:
  """Number of scalar parameters in a tree."""
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
