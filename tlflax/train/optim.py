"""The optimizer of a run and what a freeze policy makes of it.

`Setup` is what one freeze policy fixes: the model with its frozen layout (BatchNorms on running
averages, the backward pass stopped after the frozen prefix), the optimizer that gives frozen
parameters zero updates and no state, and whether the head trains on cached features.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from tlflax.models import resnet
from tlflax.train import probe, transfer


def learning_rate_schedule(phase, epochs: int, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up from 0 over `phase.warmup_epochs`, then cosine decay to 0 at the last update
  of `epochs * steps_per_epoch` steps. Its argument counts updates: with `accumulate_steps` k,
  one update every k steps (the last one takes what is left)."""
  k = phase.accumulate_steps
  total = -(-epochs * steps_per_epoch // k)
  warmup = min(round(phase.warmup_epochs * steps_per_epoch / k), total - 1)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=phase.learning_rate, warmup_steps=warmup,
      decay_steps=total, end_value=0.0)


def make_optimizer(phase, schedule: optax.Schedule, labels=None, lr_factors=None,
                   total_steps: int = 0) -> optax.GradientTransformation:
  """SGD (nesterov momentum) with weight decay added to the gradient, as PyTorch's SGD does.

  With `labels` ('trainable' / 'frozen' per parameter, see `transfer.trainable_labels`) the
  optimizer is an `optax.partition`: frozen parameters get zero updates and hold no state, and
  clipping and weight decay see only trainable ones. `lr_factors` scales each update. With
  `phase.accumulate_steps` k > 1, `optax.MultiSteps` averages the gradients of k steps and
  updates once (the other k - 1 steps leave the parameters as they are); given the run's
  `total_steps`, the last update averages the steps that are left when they are fewer than k, so
  the run performs every update its schedule counts (`learning_rate_schedule`).
  """
  trainable = [optax.clip_by_global_norm(phase.grad_clip_norm)] if phase.grad_clip_norm else []
  trainable += [optax.add_decayed_weights(phase.weight_decay),
                optax.sgd(schedule, momentum=phase.momentum or None,
                          nesterov=phase.nesterov and bool(phase.momentum))]
  tx = optax.chain(*trainable)
  if labels is not None:
    tx = optax.partition({transfer.TRAINABLE: tx, transfer.FROZEN: optax.set_to_zero()}, labels)
  if lr_factors is not None:
    tx = optax.chain(tx, transfer.scale_by_tree(lr_factors))
  if phase.accumulate_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accumulation_schedule(
        phase.accumulate_steps, total_steps)).gradient_transformation()
  return tx


def accumulation_schedule(k: int, total_steps: int) -> Callable:
  """How many steps update `g` (0-based) accumulates: k, and for the last of the
  ceil(total_steps / k) updates what is left (k when `total_steps` is 0: not known)."""
  updates = -(-total_steps // k)
  last = total_steps - (updates - 1) * k if total_steps else k
  return lambda g: jnp.where(g >= updates - 1, last, k)


def carry_opt_state(old, template):
  """`template` (a fresh optimizer state) with every leaf that `old` has at the same path and
  shape copied over: parameters that were already trainable keep their momentum and count."""
  old_flat = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(old)[0]}

  def pick(path, fresh):
    prev = old_flat.get(jax.tree_util.keystr(path))
    return prev if prev is not None and prev.shape == fresh.shape else fresh

  return jax.tree_util.tree_map_with_path(pick, template)


@dataclasses.dataclass(frozen=True)
class Setup:
  """What one freeze policy fixes for a run."""

  policy: Any  # 'none', 'backbone', 'stages:N' or a tuple of regexes
  model: Any  # the model with the policy's frozen layout
  tx: optax.GradientTransformation
  features: str | None  # cached-probe mode ('fixed', 'augmented'), None: steps on images


def policy_setup(policy, spec, schedule: optax.Schedule, num_classes: int, params,
                 streamed: bool = False, note: Callable[[str], None] = lambda _: None,
                 total_steps: int = 0) -> Setup:
  """The `Setup` of a freeze policy for the run `spec` (a `spec.RunSpec`); `params` may be
  shapes. A run that is not a transfer run and freezes nothing gets plain SGD. `streamed`: the
  data streams from the host, so the head cannot train on cached features. `total_steps`: the
  run's steps, so accumulation's last update takes what is left."""
  transfer_cfg = spec.transfer
  num_stages = resnet.num_stages(spec.model.name)
  labels = transfer.trainable_labels(params, policy, num_stages)
  layout = transfer.frozen_layout(labels, num_stages,
                                  transfer_cfg.frozen_bn if transfer_cfg else "running")
  factors = None
  if transfer_cfg is not None and (transfer_cfg.lr_mult or transfer_cfg.layer_decay != 1.0):
    factors = transfer.lr_multipliers(params, transfer_cfg.lr_mult, transfer_cfg.layer_decay,
                                      num_stages)
  model = resnet.from_config(spec.model, num_classes, **layout)
  tx = make_optimizer(spec.phase, schedule, labels, factors, total_steps)
  if transfer_cfg is not None or policy != "none":
    flat = transfer.flatten(labels)
    frozen = [p for p, v in flat.items() if v == transfer.FROZEN]
    note(f"freeze {policy!r}: {len(frozen)} of {len(flat)} parameter arrays frozen, "
         f"{len(layout['frozen_bn'])} BatchNorms on running averages, backward pass stops "
         f"after {layout['stop_gradient_units']} leading units")
  features = probe.mode_for(transfer_cfg, policy)
  if features and streamed:
    note("the cached linear probe needs the data on the devices: streamed, the head trains on "
         "images through the frozen backbone")
    features = None
  elif features:
    note(f"cached linear probe ({features} features): the head trains on the frozen backbone's "
         "features")
  return Setup(policy, model, tx, features)
