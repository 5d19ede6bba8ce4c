"""Benchmarks: `python -m tlflax.bench --what=freeze --config=PATH [--config.KEY=VALUE ...]`.

`freeze`: one train step of the target model per freeze policy — compile seconds, milliseconds
per step, images per second and XLA's FLOP count — so the backward work a frozen prefix saves is
measured, not assumed. Batches are random (the step's cost does not depend on the pixels).
"""

import functools
import json
import sys
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
flags.DEFINE_string("what", "freeze", "Which benchmark: freeze.")
flags.DEFINE_list("policies", ["none", "stages:2", "stages:4", "backbone"], "Freeze policies.")
flags.DEFINE_integer("steps", 10, "Timed steps per policy (after one warm-up step).")
flags.DEFINE_string("out", "", "Also write the rows as JSON to this file.")
config_flags.DEFINE_config_file("config", "configs/cifar10_to_cifar100.py", "Config file.")


def freeze_benchmark(config, policies, num_steps: int) -> list[dict]:
  """Times the target's train step under each freeze policy."""
  import jax
  import jax.numpy as jnp

  from tlflax import steps, train
  phase = config.target
  num_classes = 100
  shape = (phase.image_size, phase.image_size, 3)
  variables = train.init_variables(config.model, num_classes, shape, config.seed)
  keys = jax.random.split(jax.random.key(1), 2)
  batch = {"image": jax.random.normal(keys[0], (phase.batch_size,) + shape),
           "label": jax.random.randint(keys[1], (phase.batch_size,), 0, num_classes)}
  rows = []
  for policy in policies:
    setup = train.policy_setup(policy, phase, config.model, num_classes, variables["params"],
                               config.transfer, 100, note=lambda _: None)
    fresh = jax.tree.map(jnp.copy, variables)  # the step donates its state
    state = steps.create_train_state(setup.tx, fresh)
    t0 = time.perf_counter()
    step = jax.jit(functools.partial(steps.train_step, model=setup.model, tx=setup.tx),
                   donate_argnums=0).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost).get("flops", float("nan"))
    state, metrics = step(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for _ in range(num_steps):
      state, metrics = step(state, batch)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / num_steps
    rows.append({"policy": policy, "compile_s": compile_s, "step_ms": 1e3 * step_s,
                 "img_per_s": phase.batch_size / step_s, "gflops_per_step": flops / 1e9})
  base = rows[0]["step_ms"]
  for row in rows:
    row["speedup"] = base / row["step_ms"]
  return rows


def markdown(rows: list[dict], config) -> str:
  import jax
  head = (f"ResNet-18 width {config.model.width}, {config.model.dtype}, batch "
          f"{config.target.batch_size} of {config.target.image_size}x{config.target.image_size}, "
          f"{jax.devices()[0].device_kind} ({jax.default_backend()}), jax {jax.__version__}\n\n"
          "| freeze | compile s | ms/step | img/s | GFLOP/step (XLA) | speed-up vs first |\n"
          "|---|---|---|---|---|---|\n")
  return head + "".join(
      f"| {r['policy']} | {r['compile_s']:.1f} | {r['step_ms']:.1f} | {r['img_per_s']:.0f} "
      f"| {r['gflops_per_step']:.2f} | {r['speedup']:.2f}x |\n" for r in rows)


def main(argv):
  del argv
  if FLAGS.what != "freeze":
    print(f"tlflax.bench: error: unknown --what={FLAGS.what}: choose freeze", file=sys.stderr)
    sys.exit(2)
  from tlflax.errors import UserError
  try:
    rows = freeze_benchmark(FLAGS.config, FLAGS.policies, FLAGS.steps)
  except UserError as e:
    print(f"tlflax.bench: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(markdown(rows, FLAGS.config))
  if FLAGS.out:
    with open(FLAGS.out, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
