"""orbax checkpoints of a run: `RUN_DIR/checkpoints/<step>/` with one item per part of the state.

Items: `params`, `batch_stats`, `opt_state` (arrays), and `step`, `rng`, `data_state` (JSON), so a
transfer can restore params and batch_stats alone, and a resumed run restores everything.
Restores always go into an abstract target carrying today's shardings.

Faults: orbax writes each checkpoint into a temporary folder and renames it when complete, so a
run killed during a save (even `kill -9`) leaves only a temporary folder, which is never loaded
and is removed when the run resumes. On a store (`gs://`, `s3://`: no rename) it writes in place
and marks a complete checkpoint with `commit_success.txt`; one without it is never loaded. A
latest checkpoint that fails to restore (truncated, corrupt) is moved aside to
`RUN_DIR/corrupt_checkpoints/` with a warning, and the previous one is used. A save that fails for
lack of space ends the run with one line naming the folder; the checkpoints written before stay
intact.
"""

import contextlib
import errno
import logging as logging_std
import math
import os
import re
import sys
from typing import Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from tlflax import parallel
from tlflax.errors import UserError
from tlflax.io import s3, storage

ARRAY_ITEMS = ("params", "batch_stats", "opt_state")
JSON_ITEMS = ("step", "rng", "data_state")
LOSS_SCALE = "loss_scale"  # an item of float16 runs only: the dynamic loss scale's state
_COMMITTED = "commit_success.txt"  # orbax's mark of a finished checkpoint on an object store


def _scale_item(loss_scale) -> dict:
  """What a checkpoint keeps of flax's DynamicScale: its scale and its count of finite steps."""
  return {"scale": loss_scale.scale, "fin_steps": loss_scale.fin_steps}


def _handlers() -> dict:
  """Item handlers by name, so a manager opened on an existing folder can read every item."""
  handlers = {k: ocp.StandardCheckpointHandler() for k in ARRAY_ITEMS + (LOSS_SCALE,)}
  handlers.update({k: ocp.JsonCheckpointHandler() for k in JSON_ITEMS})
  return handlers


def _abstract(tree):
  """ShapeDtypeStructs with the shardings the live arrays have (the target for a restore)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _manager(directory: str, **options) -> ocp.CheckpointManager:
  """An orbax manager of `directory`, with every item's handler (so a manager opened on an
  existing folder reads them all). On a store a finished checkpoint is marked with
  `commit_success.txt` (orbax's default on gs://, set here for s3:// too: no rename there)."""
  if storage.is_remote(directory):
    options["atomicity_options"] = ocp.options.AtomicityOptions(
        mode=ocp.options.AtomicityMode.COMMIT_FILE)
  if str(directory).startswith("s3://"):
    s3.enable()
  return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(**options),
                               item_handlers=_handlers())


def _selection_metric(metrics: dict) -> float:
  """What makes a checkpoint the best: validation accuracy where the run has a validation split,
  else test accuracy."""
  value = metrics.get("val_accuracy", metrics.get("test_accuracy"))
  return value if value is not None and math.isfinite(value) else -math.inf  # never the best


class RunCheckpoints:
  """The checkpoints of one run: async saves, the last `keep` and the best by accuracy
  (`_selection_metric`). A context manager: leaving it waits for pending saves and closes."""

  def __init__(self, directory: str, keep: int = 2, keep_best: bool = True,
               async_save: bool = True):
    policies = [ocp.checkpoint_managers.LatestN(n=max(1, keep))]
    if keep_best:
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=_selection_metric, n=1, keep_checkpoints_without_metrics=False))
    self.directory = storage.absolute(directory)
    self._closed = False
    _drop_late_write_callbacks()
    # best_fn as well as the policy: orbax writes a checkpoint's metrics to disk only when
    # best_fn is set, and without them a reopened manager (a resumed run) forgets which
    # checkpoint was best and deletes it at the next save.
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(policies)
    self._mngr = _manager(self.directory, preservation_policy=policy,
                          best_fn=_selection_metric if keep_best else None, best_mode="max",
                          enable_async_checkpointing=async_save, create=True,
                          cleanup_tmp_directories=True)

  @classmethod
  def of_run(cls, run_dir: str, checkpoint_cfg) -> "RunCheckpoints":
    """The checkpoints of the run in `run_dir`, kept as `config.checkpoint` says."""
    return cls(storage.join(run_dir, "checkpoints"), keep=checkpoint_cfg.keep,
               keep_best=checkpoint_cfg.keep_best, async_save=checkpoint_cfg.async_save)

  def __enter__(self) -> Self:
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._mngr.all_steps())

  def save(self, state, rng_key, data_state: dict, metrics: dict | None = None) -> None:
    """Starts an async save of the whole train state at `state.step`."""
    step = int(state.step)
    if step in self.all_steps():
      # Stopped right after an epoch's last step, the run saved this step before its evaluation;
      # the resumed run saves it again, now with its metrics (orbax would skip the save).
      self._mngr.wait_until_finished()
      self._mngr.delete(step)
    with self._writing(step):
      self._save(step, state, rng_key, data_state, metrics)

  def _save(self, step, state, rng_key, data_state, metrics) -> None:
    scaled = {} if state.loss_scale is None else {
        LOSS_SCALE: ocp.args.StandardSave(_scale_item(state.loss_scale))}
    self._mngr.save(step, args=ocp.args.Composite(
        params=ocp.args.StandardSave(state.params),
        batch_stats=ocp.args.StandardSave(state.batch_stats),
        opt_state=ocp.args.StandardSave(state.opt_state),
        step=ocp.args.JsonSave({"step": step}),
        rng=ocp.args.JsonSave({"key": np.asarray(jax.random.key_data(rng_key)).tolist()}),
        data_state=ocp.args.JsonSave(data_state), **scaled), metrics=metrics)

  def restore_latest(self, make_target):
    """(state, rng key, data_state, step) from the newest checkpoint that restores, or None
    when there is none. `make_target(data_state)` gives the restore target (see `restore`).

    A checkpoint that fails to restore is moved to `RUN_DIR/corrupt_checkpoints/<step>` with a
    warning (kept for inspection, out of orbax's way) and the one before it is tried.
    """
    for step in sorted(self.all_steps(), reverse=True):
      try:
        data_state = self.data_state(step)
        state, key, data_state = self.restore(step, make_target(data_state))
        return state, key, data_state, step
      except (UserError, KeyboardInterrupt):
        raise
      except Exception as e:  # noqa: BLE001 -- any failure to read means: not usable
        self._set_aside(step, e)
    return None

  def _set_aside(self, step: int, error: Exception) -> None:
    aside = storage.join(os.path.dirname(self.directory), "corrupt_checkpoints", str(step))
    reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    logging.warning("checkpoint %s/%d cannot be restored (%s: %s): moved to %s; falling back to "
                    "the previous checkpoint", self.directory, step, type(error).__name__, reason,
                    aside)
    if parallel.is_main_process():
      storage.makedirs(os.path.dirname(aside))
      storage.rmtree(aside)
      storage.move(storage.join(self.directory, str(step)), aside)
    parallel.sync(f"set aside checkpoint {step}")
    self._mngr.reload()

  def restore(self, step: int, template):
    """(state, rng key, data_state) at `step`, restored into the structure and the shardings of
    `template` (arrays or ShapeDtypeStructs): a checkpoint written on any number of devices
    restores onto today's."""
    args = {k: ocp.args.StandardRestore(_abstract(getattr(template, k))) for k in ARRAY_ITEMS}
    args.update({k: ocp.args.JsonRestore() for k in JSON_ITEMS})
    if template.loss_scale is not None:
      args[LOSS_SCALE] = ocp.args.StandardRestore(_abstract(_scale_item(template.loss_scale)))
    out = self._mngr.restore(step, args=ocp.args.Composite(**args))
    step_value = np.asarray(out["step"]["step"], np.int32)
    state = template.replace(
        step=jax.make_array_from_process_local_data(template.step.sharding, step_value),
        **{k: out[k] for k in ARRAY_ITEMS})
    if template.loss_scale is not None:
      state = state.replace(loss_scale=template.loss_scale.replace(**out[LOSS_SCALE]))
    key = jax.random.wrap_key_data(np.asarray(out["rng"]["key"], np.uint32))
    return state, key, dict(out["data_state"])

  def data_state(self, step: int) -> dict:
    """The JSON `data_state` item alone (epoch, policy, ...)."""
    out = self._mngr.restore(step, args=ocp.args.Composite(data_state=ocp.args.JsonRestore()))
    return dict(out["data_state"])

  def close(self) -> None:
    """Waits for pending async saves, then releases the manager."""
    if self._closed:
      return
    self._closed = True
    with self._writing(None):
      try:
        self._mngr.wait_until_finished()
      finally:
        self._mngr.close()

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    """Turns a failed write (no space, quota, file too large, read-only) into one line naming the
    folder; orbax reports tensorstore's I/O errors as ValueErrors carrying `os_error_code`."""
    try:
      yield
    except Exception as e:  # filtered just below
      code = e.errno if isinstance(e, OSError) else None
      m = re.search(r"os_error_code='?(\d+)", str(e))
      code = int(m.group(1)) if m else code
      if code is None:
        raise
      what = f"checkpoint step {step}" if step is not None else "a checkpoint"
      raise UserError(f"cannot write {what} to {self.directory} ({os.strerror(code)}, "
                      f"{errno.errorcode.get(code, code)}): free space there or choose another "
                      "--workdir; the checkpoints written before are intact") from e


def _drop_late_write_callbacks() -> None:
  """When a write fails, the other writes of that save still finish in tensorstore's threads and
  call back into orbax's event loop, which the failure closed at once (often before the error
  reaches tlflax): each callback would print "Exception ignored ... RuntimeError: Event loop is
  closed" beside the one-line error. Installed with the first checkpoint manager, this drops
  that exact message and no other; the writes it concerns have already failed, nothing is left
  to await."""
  previous = sys.unraisablehook
  if getattr(previous, "drops_late_write_callbacks", False):
    return

  def hook(unraisable) -> None:
    late = (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == "Event loop is closed")
    if not late:
      previous(unraisable)

  hook.drops_late_write_callbacks = True
  sys.unraisablehook = hook
  logging_std.getLogger("asyncio").addFilter(_FailedWriteFutures())


class _FailedWriteFutures(logging_std.Filter):
  """asyncio's "... exception was never retrieved" for those same writes (tensorstore's I/O
  errors carry `os_error_code`): already reported, in one line."""

  def filter(self, record) -> bool:
    text = record.getMessage()
    return not ("exception was never retrieved" in text and "os_error_code" in text)


def steps_in(directory: str) -> list[int]:
  """Sorted steps of the checkpoint folders in `directory` (empty if there is none). On a store,
  where orbax cannot rename a finished checkpoint into place, only those it marked committed."""
  remote = storage.is_remote(directory)

  def finished(name: str) -> bool:  # on a store one request: the mark implies the folder
    if remote:
      return storage.exists(storage.join(directory, name, _COMMITTED))
    return storage.isdir(storage.join(directory, name))

  return sorted(int(d) for d in storage.listdir(directory) if d.isdigit() and finished(d))


def locate(path: str, what: str = "config.transfer.init_from") -> tuple[str, int]:
  """(checkpoint folder, step) for a run folder, a checkpoints folder or one step's folder;
  `what` is the flag or key the user named `path` with, for the error."""
  path = storage.absolute(path)
  candidates = [(storage.join(path, "checkpoints"), None), (path, None)]
  if os.path.basename(path).isdigit():
    candidates.append((os.path.dirname(path), int(os.path.basename(path))))
  for directory, step in candidates:
    steps = steps_in(directory)
    if step is None and steps:
      return directory, steps[-1]
    if step is not None and step in steps:
      return directory, step
  raise UserError(f"{path} holds no tlflax checkpoint: point {what} at a run folder (with "
                  "checkpoints/), one of its checkpoint folders, a .safetensors file or "
                  "hf://ORG/NAME")


def restore_variables(path: str, sharding: jax.sharding.Sharding | None = None,
                      what: str = "config.transfer.init_from") -> tuple[dict, str]:
  """params and batch_stats of the checkpoint `path` points at (see `locate`), and its name,
  placed by `sharding` (e.g. replicated over today's mesh; default: the first local device);
  `what` names the flag or key `path` came from, in errors."""
  directory, step = locate(path, what)
  mngr = _manager(directory)
  try:
    try:
      meta = mngr.item_metadata(step)
    except Exception as e:  # unreadable metadata: not a usable checkpoint
      raise UserError(f"cannot read checkpoint {directory}/{step} ({type(e).__name__}): point "
                      f"{what} at another checkpoint") from e
    device = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    args = {}
    for item in ("params", "batch_stats"):
      if meta.get(item) is None:
        raise UserError(f"checkpoint {directory}/{step} has no {item!r} item: is it a tlflax "
                        "checkpoint?")
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              meta[item])
      args[item] = ocp.args.StandardRestore(abstract)
    try:
      out = mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # truncated or corrupt array files
      first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
      raise UserError(f"cannot read checkpoint {directory}/{step} ({type(e).__name__}: {first}): "
                      f"point {what} at another checkpoint") from e
  finally:
    mngr.close()
  return {"params": out["params"], "batch_stats": out["batch_stats"]}, f"{directory}/{step}"
