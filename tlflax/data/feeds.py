"""Where a run's batches come from: the splits on the devices, or streamed from host memory.

`make_feed` picks one of two feeds with one interface, so a run (`tlflax.train.epochs.Trainer`)
takes its batches from either the same way.

`DeviceFeed` (the default) keeps the splits on the devices, a full copy on each: every step
gathers, augments and normalises its batch from there, with no host work. A split too large for
that (more than `data.device_budget_gb`, by default a quarter of the smallest device's memory)
streams instead: every step, each process gathers its
own columns of the global batch from the host copy of the split (in RAM or memory-mapped, see
`sources.host_array`), a background thread puts `data.prefetch` batches ahead on the devices, and
the devices augment and normalise them as on the device path.

The batches are the same: the host gathers the rows of the same seeded epoch table
(`batches.epoch_rows`), and each example is augmented on the device with the same key,
fold_in(key of the step, its position in the global batch). A streamed run therefore follows the
device path's curve, and resumes mid-epoch exactly. The cached linear probe (`tlflax.train.probe`)
needs the split on the devices; a streamed run trains its frozen backbone's head on images
instead.
"""

import itertools
import queue
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np

from tlflax.data import batches, sources
from tlflax.data import task as task_lib

DEVICE_SHARE = 4  # data.device_budget_gb=0: a quarter of the smallest device's memory


def task_device_bytes(task: task_lib.Task) -> int:
  """What the device path keeps on every device: every split's images and labels."""
  splits = [task.train, task.test] + ([task.val] if task.val is not None else [])
  return sum(s.images.nbytes + s.labels.nbytes for s in splits)


def device_budget_bytes(budget_gb: float, placement) -> int:
  """`budget_gb`, or a quarter of the smallest device's memory (CPU devices share the host's
  RAM: a quarter of it over the devices of this process)."""
  if budget_gb:
    return int(budget_gb * 2**30)
  devices = [d for d in placement.mesh.devices.flat if d.process_index == jax.process_index()]
  limits = []
  for d in devices:
    stats = d.memory_stats() or {}
    if stats.get("bytes_limit"):
      limits.append(int(stats["bytes_limit"]))
  if limits:
    return min(limits) // DEVICE_SHARE
  return sources.available_bytes() // (DEVICE_SHARE * max(len(devices), 1))


def choose(data_cfg, task: task_lib.Task, placement) -> tuple[str, str]:
  """('device' or 'stream', why) for a task under config.data."""
  need = task_device_bytes(task)
  pipeline = data_cfg.pipeline
  if pipeline != "auto":
    return pipeline, f"data.pipeline={pipeline!r}"
  budget = device_budget_bytes(data_cfg.device_budget_gb, placement)
  why = (f"{_size(need)} of images {'>' if need > budget else '<='} the device budget of "
         f"{_size(budget)}")
  return ("stream" if need > budget else "device"), why


def _size(nbytes: int) -> str:
  return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def eval_layout(placement, task: task_lib.Task, eval_batch_size: int
                ) -> tuple[dict, int, dict]:
  """How evaluation covers a task: its splits (test, then val if any), the batch size (a
  multiple of the device count, at most the largest split rounded up), and each split's
  [first, last) batches in one table where every split is padded to whole batches."""
  splits = {"test": task.test, **({"val": task.val} if task.val is not None else {})}
  batch = placement.round_up(min(eval_batch_size, max(len(s) for s in splits.values())))
  parts, first = {}, 0
  for name, split in splits.items():
    parts[name] = (first, first - (-len(split) // batch))
    first = parts[name][1]
  return splits, batch, parts


def place_data(placement, task: task_lib.Task, eval_batch_size: int):
  """The train split replicated on every device, then what `place_eval` places."""
  train_data = placement.replicate(batches.device_data(task.train, task.mean, task.std))
  return (train_data,) + place_eval(placement, task, eval_batch_size)


def place_eval(placement, task: task_lib.Task, eval_batch_size: int):
  """The evaluation splits replicated on every device, padded and joined as `eval_layout` says;
  the table of evaluation batches, and each split's [first, last) batches in it (see
  `tlflax.train.evaluation`)."""
  splits, eval_bs, parts = eval_layout(placement, task, eval_batch_size)
  padded = [batches.pad_for_eval(s, eval_bs) for s in splits.values()]
  joined = task_lib.Split(np.concatenate([s.images for s in padded]),
                          np.concatenate([s.labels for s in padded]))
  eval_data = placement.replicate(batches.device_data(joined, task.mean, task.std))
  eval_rows = placement.rows(np.arange(len(joined), dtype=np.int32).reshape(-1, eval_bs))
  return eval_data, eval_rows, parts


def make_feed(data_cfg, placement, task: task_lib.Task, eval_batch_size: int,
              note: Callable[[str], None]):
  """The feed config.data chooses for `task` (see `choose`); `note` says which when it streams
  or was forced."""
  kind, why = choose(data_cfg, task, placement)
  if kind == "stream":
    note(f"streaming batches from host memory ({why})")
    return StreamFeed(placement, task, eval_batch_size,
                      data_cfg.prefetch)
  if data_cfg.pipeline != "auto":
    note(f"data on the devices ({why})")
  return DeviceFeed(placement, task, eval_batch_size)


class DeviceFeed:
  """The splits on the devices. A step's arguments are the training data and the epoch's whole
  table of example rows (the step picks its batch by its step number); an evaluation batch's,
  the evaluation data, the table of evaluation rows and the batch's index in it.

  `data` arguments let the cached linear probe put its features in place of the images."""

  name = "device"

  def __init__(self, placement, task: task_lib.Task, eval_batch_size: int):
    self.placement = placement
    self.train_data, self.eval_data, self.eval_rows, self.parts = place_data(
        placement, task, eval_batch_size)
    self.eval_batch = self.eval_rows.shape[1]

  def set_augmentation_key(self, key_data: np.ndarray) -> None:
    """The run's augmentation key (uint32 key data), read by every training step."""
    self.train_data["aug_key"] = self.placement.replicate(key_data)

  def epoch(self, table: np.ndarray):
    """An epoch's (steps, batch) table of example rows, as the steps take it."""
    return self.placement.rows(table)

  def train_batches(self, rows, first: int = 0, data: dict | None = None) -> Iterator[tuple]:
    del first  # the step picks its row of `rows` from its step number
    return itertools.repeat((self.train_data if data is None else data, rows))

  def eval_batches(self, data: dict | None = None) -> Callable[[int, int], Iterator[tuple]]:
    data = self.eval_data if data is None else data
    return lambda lo, hi: ((data, self.eval_rows, i) for i in range(lo, hi))

  def example_args(self, rows, batch_size: int) -> tuple[tuple, tuple]:
    """What the train and eval steps take besides the state, to compile them."""
    del batch_size
    return (self.train_data, rows), (self.eval_data, self.eval_rows, 0)


def _prefetched(make, count: int, depth: int) -> Iterator:
  """make(0), make(1), ... make(count - 1), each computed `depth` ahead in a thread."""
  if count <= 0:
    return
  out: queue.Queue = queue.Queue(maxsize=depth)
  stop = threading.Event()

  def work():
    try:
      for i in range(count):
        item = make(i)
        while not stop.is_set():
          try:
            out.put((True, item), timeout=0.1)
            break
          except queue.Full:
            continue
        if stop.is_set():
          return
    except BaseException as e:  # noqa: BLE001 - handed to the consumer, raised there
      out.put((False, e))

  thread = threading.Thread(target=work, daemon=True, name="tlflax-prefetch")
  thread.start()
  try:
    for _ in range(count):
      ok, item = out.get()
      if not ok:
        raise item
      yield item
  finally:
    stop.set()
    thread.join(timeout=5)


class StreamFeed:
  """Serves a task's batches from host memory: the training batches of an epoch and the padded
  evaluation batches of its test (and validation) split, placed over the devices as the per-shard
  steps on batches (`steps.train_step_on_batch`, `steps.eval_step_on_batch`) take them. Each
  step's arguments are the normalisation (`train_data`: mean, std and the augmentation key) and
  the batch itself."""

  name = "stream"

  def __init__(self, placement, task: task_lib.Task, eval_batch_size: int, prefetch: int = 2):
    self.placement = placement
    self.task = task
    self.prefetch = prefetch
    self.stats = placement.replicate({"mean": np.asarray(task.mean, np.float32),
                                      "std": np.asarray(task.std, np.float32)})
    self.train_data = dict(self.stats)  # and the augmentation key (set_augmentation_key)
    self.eval_data, self.eval_rows = self.stats, None
    splits, self.eval_batch, self.parts = eval_layout(placement, task, eval_batch_size)
    self.eval_splits = list(splits.values())
    # Row r of the padded evaluation table: split `source[r]` (-1: padding), example `index[r]`.
    source, index = [], []
    for k, (name, split) in enumerate(splits.items()):
      first, last = self.parts[name]
      padded = np.arange((last - first) * self.eval_batch)
      source.append(np.where(padded < len(split), k, -1))
      index.append(np.minimum(padded, len(split) - 1))
    self._source = np.concatenate(source).astype(np.int32)
    self._index = np.concatenate(index).astype(np.int64)
    self.image_shape = task.train.images.shape[1:]

  def _place(self, images: np.ndarray, labels: np.ndarray, batch: int):
    """This process's columns of one global batch as (1, batch, ...) arrays split by columns."""
    return self.placement.split({"images": images[None], "labels": labels[None]}, batch)

  def set_augmentation_key(self, key_data: np.ndarray) -> None:
    self.train_data["aug_key"] = self.placement.replicate(key_data)

  def epoch(self, table: np.ndarray) -> np.ndarray:
    return table  # stays on the host: batches are gathered from it step by step

  def train_batches(self, table: np.ndarray, first: int = 0, data: dict | None = None
                    ) -> Iterator[tuple]:
    """(train_data, batch) for steps `first`.. of an epoch's (steps, batch) table of rows."""
    del data  # no cached features: the probe needs the device path
    batch = table.shape[1]
    lo, hi = self.placement.columns(batch)
    train = self.task.train

    def make(i):
      rows = table[first + i, lo:hi]
      return self.train_data, self._place(train.images[rows], train.labels[rows], batch)

    return _prefetched(make, table.shape[0] - first, self.prefetch)

  def eval_batches(self, data: dict | None = None) -> Callable[[int, int], Iterator[tuple]]:
    del data
    return self._eval_batches

  def _eval_batches(self, first: int, last: int) -> Iterator[tuple]:
    """(stats, batch, 0) for evaluation batches [first, last) of the padded table."""
    lo, hi = self.placement.columns(self.eval_batch)

    def make(i):
      rows = np.arange((first + i) * self.eval_batch, (first + i + 1) * self.eval_batch)[lo:hi]
      source, index = self._source[rows], self._index[rows]
      images = np.zeros((len(rows),) + self.image_shape, np.uint8)
      labels = np.full((len(rows),), -1, np.int32)
      for k, split in enumerate(self.eval_splits):
        mask = source == k
        if mask.any():
          images[mask] = split.images[index[mask]]
          labels[mask] = split.labels[index[mask]]
      return self.stats, self._place(images, labels, self.eval_batch), 0

    return _prefetched(make, last - first, self.prefetch)

  def example_args(self, rows, batch_size: int) -> tuple[tuple, tuple]:
    """What the train and eval steps take besides the state, to compile them (zero batches)."""
    del rows
    lo, hi = self.placement.columns(batch_size)
    train = self._place(np.zeros((hi - lo,) + self.image_shape, np.uint8),
                        np.zeros((hi - lo,), np.int32), batch_size)
    lo, hi = self.placement.columns(self.eval_batch)
    evaluation = self._place(np.zeros((hi - lo,) + self.image_shape, np.uint8),
                             np.full((hi - lo,), -1, np.int32), self.eval_batch)
    return (self.train_data, train), (self.stats, evaluation, 0)
