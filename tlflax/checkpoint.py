"""orbax checkpoints of a run: `RUN_DIR/checkpoints/<step>/` with one item per part of the state.

Items: `params`, `batch_stats`, `opt_state` (arrays), and `step`, `rng`, `data_state` (JSON), so a
transfer can restore params and batch_stats alone, and a resumed run restores everything.
Restores always go into an abstract target carrying today's shardings.
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from tlflax.errors import UserError

ARRAY_ITEMS = ("params", "batch_stats", "opt_state")
JSON_ITEMS = ("step", "rng", "data_state")


def _handlers() -> dict:
  """Item handlers by name, so a manager opened on an existing folder can read every item."""
  handlers = {k: ocp.StandardCheckpointHandler() for k in ARRAY_ITEMS}
  handlers.update({k: ocp.JsonCheckpointHandler() for k in JSON_ITEMS})
  return handlers


def _abstract(tree):
  """ShapeDtypeStructs with the shardings the live arrays have (the target for a restore)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class RunCheckpoints:
  """The checkpoints of one run: async saves, the last `keep` and the best by test accuracy."""

  def __init__(self, directory: str, keep: int = 2, keep_best: bool = True,
               async_save: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(n=max(1, keep))]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=lambda m: m["test_accuracy"], n=1, keep_checkpoints_without_metrics=False))
    self.directory = os.path.abspath(directory)
    self._mngr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        enable_async_checkpointing=async_save, create=True), item_handlers=_handlers())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, state, rng_key, data_state: dict, metrics: dict | None = None) -> None:
    """Starts an async save of the whole train state at `state.step`."""
    step = int(state.step)
    self._mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        batch_stats=ocp.args.StandardSave(state.batch_stats),
        opt_state=ocp.args.StandardSave(state.opt_state),
        step=ocp.args.JsonSave({"step": step}),
        rng=ocp.args.JsonSave({"key": np.asarray(jax.random.key_data(rng_key)).tolist()}),
        data_state=ocp.args.JsonSave(data_state)), metrics=metrics)

  def restore(self, step: int, template):
    """(state, rng key, data_state) at `step`, restored into the structure and the shardings of
    `template` (arrays or ShapeDtypeStructs): a checkpoint written on any number of devices
    restores onto today's."""
    args = {k: ocp.args.StandardRestore(_abstract(getattr(template, k))) for k in ARRAY_ITEMS}
    args.update({k: ocp.args.JsonRestore() for k in JSON_ITEMS})
    out = self._mngr.restore(step, args=ocp.args.Composite(**args))
    step_value = np.asarray(out["step"]["step"], np.int32)
    state = template.replace(
        step=jax.make_array_from_process_local_data(template.step.sharding, step_value),
        **{k: out[k] for k in ARRAY_ITEMS})
    key = jax.random.wrap_key_data(np.asarray(out["rng"]["key"], np.uint32))
    return state, key, dict(out["data_state"])

  def data_state(self, step: int) -> dict:
    """The JSON `data_state` item alone (epoch, policy, ...)."""
    out = self._mngr.restore(step, args=ocp.args.Composite(data_state=ocp.args.JsonRestore()))
    return dict(out["data_state"])

  def close(self) -> None:
    """Waits for pending async saves, then releases the manager."""
    self._mngr.wait_until_finished()
    self._mngr.close()


def steps_in(directory: str) -> list[int]:
  """Sorted steps of the checkpoint folders in `directory` (empty if there is none)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(d) for d in os.listdir(directory)
                if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def locate(path: str) -> tuple[str, int]:
  """(checkpoint folder, step) for a run folder, a checkpoints folder or one step's folder."""
  path = os.path.abspath(os.path.expanduser(path))
  candidates = [(os.path.join(path, "checkpoints"), None), (path, None)]
  if os.path.basename(path).isdigit():
    candidates.append((os.path.dirname(path), int(os.path.basename(path))))
  for directory, step in candidates:
    steps = steps_in(directory)
    if step is None and steps:
      return directory, steps[-1]
    if step is not None and step in steps:
      return directory, step
  raise UserError(f"{path} holds no tlflax checkpoint: point config.transfer.init_from at a "
                  "run folder (with checkpoints/) or at one checkpoint folder")


def restore_variables(path: str, sharding: jax.sharding.Sharding | None = None
                      ) -> tuple[dict, str]:
  """params and batch_stats of the checkpoint `path` points at (see `locate`), and its name,
  placed by `sharding` (e.g. replicated over today's mesh; default: the first local device)."""
  directory, step = locate(path)
  mngr = ocp.CheckpointManager(directory, item_handlers=_handlers())
  try:
    meta = mngr.item_metadata(step)
    device = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    args = {}
    for item in ("params", "batch_stats"):
      if meta.get(item) is None:
        raise UserError(f"checkpoint {directory}/{step} has no {item!r} item: is it a tlflax "
                        "checkpoint?")
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              meta[item])
      args[item] = ocp.args.StandardRestore(abstract)
    out = mngr.restore(step, args=ocp.args.Composite(**args))
  finally:
    mngr.close()
  return {"params": out["params"], "batch_stats": out["batch_stats"]}, f"{directory}/{step}"
