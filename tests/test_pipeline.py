"""Which data path a run takes, and the host-side parts of streaming (in-process, one device)."""

import threading

import ml_collections
import numpy as np
import pytest

from tlflax import parallel
from tlflax.data import feeds
from tlflax.data import task as task_lib


def _task(n=100, size=8):
  split = task_lib.Split(np.zeros((n, size, size, 3), np.uint8), np.zeros(n, np.int32))
  return task_lib.Task("t", split, task_lib.Split(split.images[:10], split.labels[:10]), 2,
                   np.zeros(3, np.float32), np.ones(3, np.float32))


def _cfg(pipeline="auto", budget=0.0):
  return ml_collections.ConfigDict({"pipeline": pipeline, "device_budget_gb": budget,
                                    "host_budget_gb": 0.0, "spill_dir": "", "prefetch": 2})


def test_a_task_streams_only_when_it_exceeds_the_device_budget():
  task, place = _task(), parallel.Placement.create()
  need = feeds.task_device_bytes(task)
  assert need == 110 * (8 * 8 * 3 + 4)
  assert feeds.choose(_cfg(budget=need / 2**30), task, place)[0] == "device"
  kind, why = feeds.choose(_cfg(budget=(need - 1) / 2**30), task, place)
  assert kind == "stream" and why == "0.0 MiB of images > the device budget of 0.0 MiB"  # 21 kB
  assert (feeds._size(2**31), feeds._size(5 * 2**20)) == ("2.00 GiB", "5.0 MiB")
  assert feeds.choose(_cfg("device", budget=1e-9), task, place) == ("device",
                                                                      "data.pipeline='device'")
  assert feeds.choose(_cfg("stream"), task, place)[0] == "stream"
  auto = feeds.device_budget_bytes(0.0, place)  # CPU: a quarter of the host's share
  assert 0 < auto < 2**50 and feeds.choose(_cfg(), task, place)[0] == "device"


def test_streamed_batches_hold_the_rows_of_the_epoch_table_and_padded_evaluation():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (50, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(50, dtype=np.int32)
  train = task_lib.Split(images, labels)
  test = task_lib.Split(images[:7], labels[:7])
  task = task_lib.Task("t", train, test, 50, np.zeros(3, np.float32), np.ones(3, np.float32),
                   val=task_lib.Split(images[7:10], labels[7:10]))
  feed = feeds.StreamFeed(parallel.Placement.create(), task, eval_batch_size=4)
  table = np.array([[3, 1, 4, 1], [5, 9, 2, 6]], np.int32)
  got = [np.asarray(b["labels"])[0].tolist() for _, b in feed.train_batches(table, first=1)]
  assert got == [[5, 9, 2, 6]]  # resumed after step 1: only step 2's rows
  assert feed.parts == {"test": (0, 2), "val": (2, 3)}
  batches = list(feed.eval_batches()(0, 3))
  labels_seen = [np.asarray(b["labels"])[0].tolist() for _, b, _ in batches]
  assert labels_seen == [[0, 1, 2, 3], [4, 5, 6, -1], [7, 8, 9, -1]]
  np.testing.assert_array_equal(np.asarray(batches[1][1]["images"])[0, 3], 0)  # padding is blank
  np.testing.assert_array_equal(np.asarray(batches[2][1]["images"])[0, :3], images[7:10])


def test_prefetching_passes_errors_on_and_stops_its_thread_when_left_early():
  def make(i):
    if i == 3:
      raise ValueError("bad batch 3")
    return i

  with pytest.raises(ValueError, match="bad batch 3"):
    list(feeds._prefetched(make, 5, 2))
  before = threading.active_count()
  it = feeds._prefetched(lambda i: i, 1000, 2)
  assert [next(it), next(it)] == [0, 1]
  it.close()
  assert threading.active_count() == before
