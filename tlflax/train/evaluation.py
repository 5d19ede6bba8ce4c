"""Evaluation, in one place: every example of a split once, in padded and masked batches of one
shape, summed on the devices and divided on the host. A run evaluates with it every epoch
(`epochs.Trainer.evaluate`), `--mode=evaluate` with the same eval step on any split."""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from tlflax.train import steps


def evaluate(eval_fn: Callable, state: steps.TrainState, parts: dict, batches: Callable) -> dict:
  """`eval_fn(variables, *args)` summed over the batches `batches(first, last)` of each split of
  `parts` ({name: [first, last) batches of the evaluation table}), as per-example means."""
  out = {}
  for name, part in parts.items():
    totals = evaluate_sums(eval_fn, state, part, batches)
    count = int(totals["count"])
    out.update({f"{name}_loss": float(totals["loss"]) / count,
                f"{name}_accuracy": float(totals["correct"]) / count,
                f"{name}_top5": float(totals["correct_top5"]) / count,
                f"{name}_count": count})
  return out


def evaluate_sums(eval_fn: Callable, state: steps.TrainState, part: tuple[int, int],
                  batches: Callable) -> dict:
  """The sums `eval_fn(variables, *args)` returns, added over the batches of `part` ([first,
  last) of the evaluation table), on the host."""
  variables = steps.eval_variables(state)
  totals = None
  for args in batches(*part):
    sums = eval_fn(variables, *args)
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  return jax.device_get(totals)
