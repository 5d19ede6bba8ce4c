"""What runs a run's steps: the freeze policy in force, its optimizer and compiled steps, the
feed the batches come from, the cached probe's features, and the augmentation key.

`fit` asks it, per epoch: `ready` (switch policy and compile when the schedule says so),
`train_epoch` (the steps, yielding after each), `evaluate`. The bench times the same compiled
steps (`compile`, `train_args`), so its figures are those of a run.
"""

import functools
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from tlflax.data import batches
from tlflax.data import task as task_lib
from tlflax.models import resnet
from tlflax.train import evaluation, optim, probe, steps, transfer


class NonFinite(Exception):
  """A loss or gradient was not finite at global step `step`."""

  def __init__(self, step: int):
    super().__init__(step)
    self.step = step


class Trainer:
  """The steps of one run (`spec`, `plan`) over `feed`'s batches on `placement`'s devices;
  `recorder` hears its notes, step windows and compile time."""

  def __init__(self, spec, plan, task: task_lib.Task, placement, feed, recorder):
    self.spec, self.plan, self.task = spec, plan, task
    self.placement, self.feed, self.recorder = placement, feed, recorder
    self.base_model = resnet.from_config(spec.model, task.num_classes)
    self.setup: optim.Setup | None = None
    # The compiled steps: train `(state, sums, data, rows) -> (state, sums)`, eval `(variables,
    # data, rows, index) -> sums` (the bench times these very functions).
    self.train_step = self.eval_step = None
    self._order_key = None
    self.cache = None
    self._t_epoch = 0.0
    self.loss_scaling = resnet.loss_scaling(spec.model)

  # --- Policies ----------------------------------------------------------------------------

  def setup_for(self, policy, params) -> optim.Setup:
    """The model and optimizer of a freeze policy (`params` may be shapes)."""
    return optim.policy_setup(policy, self.spec, self.plan.schedule, self.task.num_classes,
                              params, streamed=self.feed.name == "stream",
                              note=self.recorder.note,
                              total_steps=self.plan.epochs * self.plan.steps_per_epoch)

  def policy_at(self, epoch: int):
    return transfer.policy_at(self.spec.transfer, epoch)

  def restore_target(self, policy, shapes: dict) -> steps.TrainState:
    """The abstract state a checkpoint taken under `policy` restores into, on today's devices."""
    self.setup = self.setup_for(policy, shapes["params"])
    return self.placement.abstract(jax.eval_shape(
        lambda: steps.create_train_state(self.setup.tx, shapes, self.loss_scaling)))

  def begin(self, root_key: jax.Array, variables: dict | None = None, state=None):
    """The state training starts from (a fresh one from `variables` under the first epoch's
    policy, or a restored `state`), with the data order and augmentation keys of `root_key`."""
    _, self._order_key, aug_key = jax.random.split(root_key, 3)
    self.feed.set_augmentation_key(np.asarray(jax.random.key_data(aug_key)))
    self.cache = probe.FeatureCache(self.placement, self.base_model, self.spec.phase,
                                    self.feed.train_data, self.feed.eval_data,
                                    self.feed.eval_rows)
    if state is None:
      self.setup = self.setup_for(self.policy_at(0), variables["params"])
      state = self.placement.jit_replicated(functools.partial(
          steps.create_train_state, self.setup.tx, loss_scaling=self.loss_scaling))(variables)
    return state

  # --- Compiling ---------------------------------------------------------------------------

  def epoch_rows(self, epoch: int):
    """The epoch's (steps, batch) table of example rows, as the feed serves it."""
    return self.feed.epoch(batches.epoch_rows(self._order_key, epoch, self.plan.train_examples,
                                               self.plan.batch_size))

  def ready(self, epoch: int, state, rows):
    """`state` under the policy of `epoch`: a new policy gets its optimizer (keeping the state
    of parameters that were trainable before) and the steps are compiled; the compile time goes
    to the recorder."""
    policy = self.policy_at(epoch)
    if self.train_step is not None and policy == self.setup.policy:
      return state
    t0 = time.perf_counter()
    if policy != self.setup.policy:
      self.setup = self.setup_for(policy, state.params)
      state = state.replace(opt_state=optim.carry_opt_state(
          state.opt_state, self.placement.jit_replicated(self.setup.tx.init)(state.params)))
    self.compile(state, rows)
    seconds = time.perf_counter() - t0
    self.recorder.add_time("compile_s", seconds)
    self.recorder.note(f"compiled train and eval steps in {seconds:.1f}s")
    return state

  def train_args(self, rows, step_data=None) -> tuple:
    """What the train step takes besides the state and the sums: the data (or cached features)
    and the epoch's rows."""
    train_args, _ = self.feed.example_args(rows, self.plan.batch_size)
    return (step_data, rows) if step_data is not None else train_args

  def compile(self, state, rows) -> None:
    """Compiles the setup's train and eval steps ahead of the epoch, so img/s measures training,
    not compilation (for the cached probe, against its features' shapes)."""
    train_fn, eval_fn = step_functions(self.setup, self.spec.phase, self.feed.name == "stream",
                                       self.placement, self.base_model)
    train_args, eval_args = self.feed.example_args(rows, self.plan.batch_size)
    if self.setup.features:
      abstract = self.cache.compile(state, self.setup.features, rows)
      train_args = (abstract["train"], rows)
      eval_args = (abstract["test"],) + tuple(eval_args[1:])
    self.train_step = train_fn.lower(state, steps.zero_metrics(), *train_args).compile()
    self.eval_step = eval_fn.lower(steps.eval_variables(state), *eval_args).compile()

  def eval_args(self) -> tuple:
    """What the eval step takes besides the variables, for the first evaluation batch (images;
    the cached probe's are features)."""
    return self.feed.example_args(None, self.plan.batch_size)[1]

  # --- Training and evaluating ------------------------------------------------------------

  def epoch_data(self, state, epoch: int, rows):
    """The cached probe's training features for `epoch` (None when the steps take images)."""
    if not self.setup.features:
      return None
    return self.cache.train(state, self.setup.features, rows, epoch * self.plan.steps_per_epoch)

  def epoch_elapsed(self) -> float:
    """Seconds of training in the epoch under way (features computed once excluded)."""
    return time.perf_counter() - self._t_epoch

  def train_epoch(self, state, epoch: int, rows, first: int, sums) -> Iterator[tuple]:
    """Steps `first`..steps_per_epoch - 1 of `epoch` from `sums` (`epoch_sums`); yields (state,
    sums, steps of the epoch done) after each. One dispatch a step: the step adds its metrics to the sums it carries on
    the device; the host reads them every `log_every_steps` steps and at the epoch's end, for
    the progress line and the recorder's step windows, and raises `NonFinite` within the epoch
    once a loss or gradient was not finite."""
    self._t_epoch = time.perf_counter()
    step_data = self.epoch_data(state, epoch, rows)
    if self.setup.features == "fixed":  # computed once a run: counted in features_s
      self._t_epoch = time.perf_counter()
    spe, progress = self.plan.steps_per_epoch, self.recorder.progress
    progress.start_epoch(epoch, first)
    seen, seen_at, seen_t = jax.device_get(sums), first, time.perf_counter()
    batches = self.feed.train_batches(rows, first, step_data)
    for i, (data, batch_rows) in zip(range(first, spe), batches, strict=False):
      state, sums = self.train_step(state, sums, data, batch_rows)
      if self.plan.logs(i + 1):
        host = jax.device_get(sums)
        if int(host["nonfinite_step"]) >= 0:
          raise NonFinite(int(host["nonfinite_step"]))
        if progress.wants_update(i):
          progress.update(i + 1, steps.mean_of(host["loss"], i + 1, host["skipped"]))
        now, n = time.perf_counter(), i + 1 - seen_at
        skipped = float(host["skipped"] - seen["skipped"])
        if n > 0:
          self.recorder.window(epoch * spe + i + 1, n, {
              "train_loss": steps.mean_of(host["loss"] - seen["loss"], n, skipped),
              "train_accuracy": steps.mean_of(host["accuracy"] - seen["accuracy"], n, skipped),
              "img_per_s": n * self.plan.batch_size / max(now - seen_t, 1e-9),
              **scaling_figures(self.loss_scaling, host, seen)})
        seen, seen_at, seen_t = host, i + 1, now
      yield state, sums, i + 1

  def evaluate(self, state) -> dict:
    """Every evaluation example once (padded, masked batches of one shape): `{split}_loss`,
    `_accuracy`, `_top5`, `_count` for the test split and the validation split if any."""
    features = self.cache.test(state) if self.setup.features else None
    return evaluation.evaluate(self.eval_step, state, self.feed.parts,
                               self.feed.eval_batches(features))


def step_functions(setup: optim.Setup, phase, streamed: bool, placement,
                   base_model) -> tuple[Callable, Callable]:
  """`setup`'s train step `(state, sums, data, rows)` and eval step `(variables, data, rows,
  index)`, jitted over `placement`'s devices: on images on the devices, on streamed batches, or
  on cached features for a cached linear probe."""
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


def scaling_figures(loss_scaling: bool, sums: dict, before: dict | None = None) -> dict:
  """float16 runs: the steps loss scaling skipped (since `before`'s sums) and the last scale."""
  if not loss_scaling:
    return {}
  skipped = float(sums["skipped"]) - (float(before["skipped"]) if before else 0.0)
  return {"skipped_steps": round(skipped), "loss_scale": float(sums["loss_scale"])}


def epoch_sums(host: dict | None = None) -> dict:
  """An epoch's metric sums as the step carries them: zero at its start, or those restored from
  a checkpoint taken inside it (`host`)."""
  zero = steps.zero_metrics()
  if host is None:
    return zero
  return {k: jnp.asarray(host.get(k, zero[k]), zero[k].dtype) if k != "nonfinite_step"
          else zero[k] for k in zero}
