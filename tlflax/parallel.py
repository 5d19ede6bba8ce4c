"""Devices, processes and placement: the mesh, where arrays live, and how per-shard steps run.

One data-parallel axis, `data`, spans every device of every process. The steps in `steps.py` are
written for one shard with an `axis_name`; `Placement.spmd` runs them over the mesh under
`jax.jit(jax.shard_map(...))` (the default) or `jax.jit(jax.pmap(...))`. Their inputs come in two
kinds:

- replicated: the train state and the dataset, a full copy on every device;
- split along the batch: the table of example indices of each global batch (`Placement.rows`),
  one block of columns per device. A process transfers only the columns of its own devices.

Each device gathers, augments and normalises its own examples from its copy of the dataset, so a
global batch is the same whatever the number of devices or processes (see `data.py`).
"""

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tlflax.errors import UserError

AXIS = "data"
KINDS = ("shard_map", "pmap")
# TLFLAX_ACCEL (set by launch.sh) -> the jax backend that must be present.
ACCELERATORS = {"cpu": "cpu", "cuda12": "gpu", "cuda13": "gpu", "tpu": "tpu"}
_SLURM_STEP = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------


def _in_slurm_job_step() -> bool:
  """True inside a SLURM job step of several tasks (what `srun` starts): jax can read its layout."""
  return all(k in os.environ for k in _SLURM_STEP) and int(os.environ["SLURM_NTASKS"]) > 1


def initialize(coordinator: str = "", num_processes: int = 0, process_id: int = -1,
               distributed: bool = False) -> bool:
  """Starts JAX's multi-controller runtime when this process is one of several.

  With `coordinator` (HOST:PORT of process 0) the layout comes from the flags; with `distributed`,
  or inside a multi-task SLURM step, jax detects it (Cloud TPU VMs, SLURM, Open MPI). Must run
  before anything touches a JAX backend. Returns whether the runtime was started.
  """
  if coordinator:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise UserError(f"--coordinator={coordinator} needs --num_processes=N (N >= 1) and "
                      f"--process_id=I with 0 <= I < N, got {num_processes} and {process_id}")
    kwargs = {"coordinator_address": coordinator, "num_processes": num_processes,
              "process_id": process_id}
  elif num_processes > 1 or process_id >= 0:
    raise UserError("--num_processes and --process_id need --coordinator=HOST:PORT (the address "
                    "of process 0); on a TPU VM or under SLURM use --distributed instead")
  elif distributed or _in_slurm_job_step():
    kwargs = {}
  else:
    return False
  # CPU devices of different processes talk through gloo (GPUs and TPUs use their own fabric).
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**kwargs)
  except (ValueError, RuntimeError, TypeError) as e:
    where = f"coordinator {coordinator}, process {process_id} of {num_processes}" if coordinator \
        else "layout detected from the environment"
    reason = " ".join(str(e).split())[:200]
    raise UserError(f"cannot start jax.distributed ({where}): {reason}: start every process "
                    "with the same --coordinator and --num_processes, or run under SLURM / on a "
                    "TPU VM with --distributed") from e
  return True


def check_accelerator(expected: str | None = None) -> None:
  """Stops with one line when `TLFLAX_ACCEL` names an accelerator but jax finds only the CPU."""
  expected = os.environ.get("TLFLAX_ACCEL", "") if expected is None else expected
  if not expected:
    return
  if expected not in ACCELERATORS:
    raise UserError(f"TLFLAX_ACCEL={expected!r} is not one of {', '.join(ACCELERATORS)}: "
                    "set it to the accelerator of this machine, or unset it")
  want = ACCELERATORS[expected]
  if want != "cpu" and jax.default_backend() == "cpu":
    check = (f"check that `nvidia-smi` lists the GPU with a driver for CUDA {expected[-2:]}"
             if want == "gpu" else "run it on a Cloud TPU VM")
    raise UserError(f"TLFLAX_ACCEL={expected} but jax finds only the CPU: install the matching "
                    f"jax (`pip install -U 'jax[{expected}]'`, or `TLFLAX_ACCEL={expected} "
                    f"./launch.sh install`) and {check}")


def describe(devices: Sequence[jax.Device] | None = None) -> dict:
  """What a run trains on: backend, device kind, number of devices (default: all) and processes."""
  devices = list(devices if devices is not None else jax.devices())
  return {"backend": devices[0].platform, "device_kind": devices[0].device_kind,
          "devices": len(devices), "processes": len({d.process_index for d in devices})}


def is_main_process() -> bool:
  """Process 0 writes metrics, summaries, TensorBoard events and the report; the others train."""
  return jax.process_index() == 0


def sync(name: str) -> None:
  """Waits until every process reaches this point (a no-op with one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


# ------------------------------------------------------------------------------------------------
# Mesh and placement
# ------------------------------------------------------------------------------------------------


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all of them, every process) with axis `data`.

  jax orders the devices for fast collectives; a stable sort by process then keeps each process's
  devices next to each other, so each process holds one contiguous block of every batch.
  """
  devices = list(devices or jax.devices())
  if devices == list(jax.devices()):
    devices = list(jax.make_mesh((len(devices),), (AXIS,)).devices.flat)
  devices.sort(key=lambda d: d.process_index)
  return Mesh(np.array(devices), (AXIS,), axis_types=(AxisType.Auto,))


def check_kind(kind: str) -> None:
  """config.parallel must be one of KINDS; pmap runs within one process."""
  if kind not in KINDS:
    raise UserError(f"unknown config.parallel {kind!r}: choose one of {', '.join(KINDS)}")
  if kind == "pmap" and jax.process_count() > 1:
    raise UserError("config.parallel='pmap' runs within one process; runs over several "
                    "processes use config.parallel='shard_map' (the default)")


@dataclasses.dataclass(frozen=True)
class Placement:
  """Where a run's arrays live and how its per-shard steps run: a mesh and a parallel kind."""

  mesh: Mesh
  kind: str = "shard_map"

  @classmethod
  def create(cls, kind: str = "shard_map", devices: Sequence[jax.Device] | None = None
             ) -> "Placement":
    check_kind(kind)
    return cls(make_mesh(devices), kind)

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def describe(self) -> dict:
    """backend, device_kind, devices, processes of this placement, and its parallel kind."""
    return {**describe(list(self.mesh.devices.flat)), "parallel": self.kind}

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  def check_batch(self, batch_size: int, key: str) -> None:
    """A global batch must split evenly over the devices; else one line with the nearest sizes."""
    n = self.num_devices
    if batch_size % n:
      below, above = batch_size // n * n, (batch_size // n + 1) * n
      nearest = f"{below} or {above}" if below else str(above)
      raise UserError(f"{key}={batch_size} does not split evenly over {n} devices: use "
                      f"{nearest} (a multiple of {n})")

  def round_up(self, batch_size: int) -> int:
    """The smallest multiple of the device count that is >= batch_size."""
    return -(-batch_size // self.num_devices) * self.num_devices

  def replicate(self, tree):
    """Host values, the same on every process, as arrays with a full copy on every device."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, np.asarray(x)), tree)

  def rows(self, table: np.ndarray):
    """A (steps, batch) table of example indices, the same on every process, split by columns:
    device d holds columns [d * batch / n, (d + 1) * batch / n) of every row."""
    lo, hi = self.columns(table.shape[1])
    return self.split(table[:, lo:hi], table.shape[1])

  def columns(self, batch: int) -> tuple[int, int]:
    """[lo, hi): the columns of a global batch that this process's devices hold."""
    if self.kind == "pmap":  # one process
      return 0, batch
    sharding = NamedSharding(self.mesh, P(None, AXIS))
    spans = sorted((s[1].start or 0, s[1].stop or batch)
                   for s in sharding.addressable_devices_indices_map((1, batch)).values())
    return spans[0][0], spans[-1][1]

  def split(self, local, batch: int):
    """Arrays (rows, hi - lo, ...) holding this process's `columns(batch)` of (rows, batch, ...)
    tables, as global arrays split by columns (a tree of them: each leaf alike)."""
    n = self.num_devices

    def one(x):
      x = np.ascontiguousarray(x)
      if self.kind == "pmap":  # pmap maps over a leading device axis
        blocks = x.reshape((x.shape[0], n, batch // n) + x.shape[2:])
        return jax.device_put(np.ascontiguousarray(np.moveaxis(blocks, 1, 0)),
                              NamedSharding(self.mesh, P(AXIS)))
      shape = (x.shape[0], batch) + x.shape[2:]
      return jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(None, AXIS)), x,
                                                    shape)

    return jax.tree.map(one, local)

  def spmd(self, fn: Callable, num_args: int, split: Sequence[int] = (),
           donate: Sequence[int] = ()) -> Callable:
    """Runs `fn(*args, axis_name='data')`, written for one shard, over every device, jitted.

    Arguments at the positions in `split` are tables from `rows` (each device sees its own block);
    every other argument, and every output, is replicated. The outputs must be the same on every
    device (averaged or summed over the axis): shard_map checks this when it traces.
    """
    fn = functools.partial(fn, axis_name=AXIS)
    if self.kind == "pmap":
      in_axes = tuple(0 if i in split else None for i in range(num_args))
      mapped = jax.pmap(fn, axis_name=AXIS, in_axes=in_axes, out_axes=None,
                        devices=list(self.mesh.devices.flat))
    else:
      in_specs = tuple(P(None, AXIS) if i in split else P() for i in range(num_args))
      mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=in_specs, out_specs=P())
    return jax.jit(mapped, donate_argnums=tuple(donate))

  def jit_replicated(self, fn: Callable) -> Callable:
    """`fn` jitted with every output replicated on the mesh (state creation, optimizer init)."""
    return jax.jit(fn, out_shardings=self.replicated)

  def abstract(self, tree):
    """ShapeDtypeStructs of `tree` (arrays or shapes) carrying the replicated sharding: the
    target of a checkpoint restore onto today's devices, whatever wrote it."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.replicated), tree)
