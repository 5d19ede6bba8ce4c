"""Synthetic datasets, split strings, adaptation, normalisation and on-device augmentation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tlflax.data import batches
from tlflax.data import task as task_lib
from tlflax.errors import UserError


def test_synthetic_is_deterministic_per_seed_and_slices_are_prefixes():
  a = task_lib.synthetic_split("synthetic100", "train[:600]", seed=3)
  b = task_lib.synthetic_split("synthetic100", "train[:600]", seed=3)
  c = task_lib.synthetic_split("synthetic100", "train[:600]", seed=4)
  part = task_lib.synthetic_split("synthetic100", "train[300:400]", seed=3)
  np.testing.assert_array_equal(a.images, b.images)
  np.testing.assert_array_equal(a.labels, b.labels)
  assert np.mean(a.images != c.images) > 0.5
  np.testing.assert_array_equal(part.images, a.images[300:400])
  np.testing.assert_array_equal(part.labels, a.labels[300:400])


@pytest.mark.parametrize("name,classes", [("synthetic10", 10), ("synthetic100", 100)])
def test_synthetic_shapes_and_label_range(name, classes):
  split = task_lib.synthetic_split(name, "test[:1000]")
  assert split.images.shape == (1000, 32, 32, 3) and split.images.dtype == np.uint8
  assert split.labels.dtype == np.int32
  assert split.labels.min() >= 0 and split.labels.max() == classes - 1
  assert len(np.unique(split.labels)) == classes


def test_synthetic_classes_share_primitives():
  """A 100-class image (a, b) shows the colours of 10-class images a and b."""
  ten = task_lib.synthetic_split("synthetic10", "train[:2000]")
  hundred = task_lib.synthetic_split("synthetic100", "train[:2000]")
  prims = task_lib._primitives()
  for split, classes in ((ten, 10), (hundred, 100)):
    for label in (0, 7) if classes == 10 else (7, 70):
      image = split.images[split.labels == label][0].astype(float) / 255
      first, second, _ = task_lib._class_primitives(classes, label)
      for k in (first, second):
        colour = prims[k, 0, 0, :3]
        # the primitive's colour (scaled by a gain in [0.65, 1]) appears somewhere in the image
        ratio = image / colour
        close = np.all(np.abs(ratio - ratio.mean(-1, keepdims=True)) < 0.08, -1)
        assert close.sum() >= 8, (classes, label, k)


@pytest.mark.parametrize("split,expected", [
    ("train", (0, 50_000)), ("test[:500]", (0, 500)), ("train[10%:20%]", (5000, 10000)),
    ("test[-100:]", (9900, 10000))])
def test_split_strings(split, expected):
  assert task_lib._slice_bounds(split, task_lib.SYNTHETIC_SIZES)[1:] == expected


@pytest.mark.parametrize("split", ["validation", "train[5:5]", "train[:x]"])
def test_bad_split_strings_are_user_errors(split):
  with pytest.raises(UserError):
    task_lib.synthetic_split("synthetic10", split)


def test_balanced_subset_takes_k_per_class_deterministically():
  split = task_lib.synthetic_split("synthetic10", "train[:1000]")
  a = task_lib.balanced_subset(split, 7, 10, seed=1)
  b = task_lib.balanced_subset(split, 7, 10, seed=1)
  c = task_lib.balanced_subset(split, 7, 10, seed=2)
  assert np.bincount(a.labels, minlength=10).tolist() == [7] * 10
  np.testing.assert_array_equal(a.images, b.images)
  assert not np.array_equal(a.images, c.images)
  with pytest.raises(UserError, match="examples_per_class"):
    task_lib.balanced_subset(split, 1000, 10, seed=0)


def test_adapt_images_grey_to_rgb_and_resize():
  grey = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1), dtype=np.uint8)
  out = task_lib.adapt_images(grey, 32)
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  same = task_lib.adapt_images(np.repeat(grey, 3, -1), 28)
  np.testing.assert_array_equal(same, np.repeat(grey, 3, -1))  # right size: untouched
  flat = task_lib.adapt_images(np.full((2, 28, 28, 3), 77, np.uint8), 32)
  assert np.all(flat == 77)  # resizing a constant image keeps it constant


def test_channel_stats_match_numpy():
  images = np.random.default_rng(0).integers(0, 256, (9000, 4, 4, 3), dtype=np.uint8)
  mean, std = task_lib.channel_stats(images)
  ref = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
  np.testing.assert_allclose(std, ref.std(0), rtol=1e-5)


def _batch_of(images, **kw):
  n = len(images)
  on_device = {"images": jnp.asarray(images), "labels": jnp.arange(n, dtype=jnp.int32),
               "mean": jnp.zeros(3), "std": jnp.ones(3) / 255.0}
  batch = jax.jit(functools.partial(batches.shard_train_batch, axis_name=None, **kw))(
      on_device, jnp.arange(n), jax.random.key(0))
  return np.asarray(batch["image"]).round().astype(np.int64)  # undoes the /255 normalisation


def test_flip_happens_to_about_half_and_keeps_shapes():
  images = np.random.default_rng(0).integers(0, 256, (400, 8, 8, 3), dtype=np.uint8)
  out = _batch_of(images, crop_padding=0, flip=True)
  assert out.shape == images.shape
  flipped = np.all(out == images[:, :, ::-1], axis=(1, 2, 3))
  kept = np.all(out == images, axis=(1, 2, 3))
  assert np.all(flipped | kept)
  assert 150 < flipped.sum() < 250


def test_crop_is_a_shifted_window_of_the_zero_padded_image():
  images = np.random.default_rng(1).integers(1, 256, (200, 8, 8, 3), dtype=np.uint8)
  out = _batch_of(images, crop_padding=2, flip=False)
  padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
  offsets = []
  for img, pad in zip(out, padded):
    hits = [(dy, dx) for dy in range(5) for dx in range(5)
            if np.array_equal(pad[dy:dy + 8, dx:dx + 8], img)]
    assert len(hits) == 1
    offsets.append(hits[0])
  assert len(set(offsets)) >= 20  # all 25 offsets are possible; most should appear
  assert sum(o != (2, 2) for o in offsets) > 150  # most images really move


def test_eval_batches_are_untouched_and_masked():
  split = task_lib.synthetic_split("synthetic10", "test[:37]")
  mean, std = task_lib.channel_stats(split.images)
  padded = batches.pad_for_eval(split, 16)
  assert len(padded) == 48
  on_device = batches.device_data(padded, mean, std)
  seen = 0
  for i in range(3):
    batch = batches.shard_eval_batch(on_device, jnp.arange(i * 16, (i + 1) * 16))
    mask = np.asarray(batch["mask"])
    real = split.images[i * 16:(i + 1) * 16]
    expected = (real / 255.0 - mean) / std
    np.testing.assert_allclose(np.asarray(batch["image"])[:len(real)], expected, atol=1e-5)
    seen += mask.sum()
    assert mask.sum() == len(real)
  assert seen == 37


def test_epoch_rows_are_a_seeded_permutation_without_the_remainder():
  key = jax.random.key(0)
  rows = batches.epoch_rows(key, 3, 100, 32)
  assert rows.shape == (3, 32) and rows.dtype == np.int32
  assert len(np.unique(rows)) == 96 and rows.min() >= 0 and rows.max() < 100
  np.testing.assert_array_equal(rows, batches.epoch_rows(key, 3, 100, 32))
  assert not np.array_equal(rows, batches.epoch_rows(key, 4, 100, 32))


def test_load_task_synthetic_normalises_with_train_statistics():
  from tlflax.config import phase_config
  phase = phase_config("synthetic10", 1, train_split="train[:512]", test_split="test[:64]",
                       examples_per_class=20)
  task = task_lib.load_task(phase, None, seed=0)
  assert task.num_classes == 10 and len(task.train) == 200 and len(task.test) == 64
  norm = (task.train.images / 255.0 - task.mean) / task.std
  np.testing.assert_allclose(norm.reshape(-1, 3).mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(norm.reshape(-1, 3).std(0), 1, atol=1e-4)


def test_batches_follow_the_epoch_permutation_and_each_step_augments_anew(monkeypatch):
  """What the train step sees at global step s: batch s % S of that epoch's permutation,
  augmented with fold_in(aug_key, s); a run resumed at any step sees the same."""
  import functools

  import jax.numpy as jnp

  from tlflax.train import steps

  def capture(state, batch, **kw):  # stands in for the model's step: returns its batch
    del kw
    return state.replace(step=state.step + 1), batch

  monkeypatch.setattr(steps, "train_step", capture)
  n, bs = 40, 8
  labels = np.arange(n, dtype=np.int32)  # label = example index: shows which rows came
  images = np.random.default_rng(0).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  split = task_lib.Split(images, labels)
  on_device = batches.device_data(split, np.zeros(3), np.ones(3))
  on_device["aug_key"] = np.asarray(jax.random.key_data(jax.random.key(7)))
  step_fn = jax.jit(functools.partial(steps.train_step_on_data, model=None, tx=None,
                                      crop_padding=2, flip=True))
  order_key = jax.random.key(3)
  per_epoch = n // bs

  def batch_at(step):
    rows = batches.epoch_rows(order_key, step // per_epoch, n, bs)
    state = steps.TrainState(step=jnp.asarray(step, jnp.int32), params={}, batch_stats={},
                             opt_state={})
    _, batch = step_fn(state, on_device, jnp.asarray(rows))
    return rows, jax.device_get(batch)

  seen = {}
  for step in range(2 * per_epoch):
    rows, batch = batch_at(step)
    np.testing.assert_array_equal(batch["label"], rows[step % per_epoch])
    seen[step] = batch
  epoch0 = np.concatenate([seen[s]["label"] for s in range(per_epoch)])
  epoch1 = np.concatenate([seen[s]["label"] for s in range(per_epoch, 2 * per_epoch)])
  assert sorted(epoch0) == sorted(epoch1) == list(range(n))  # every example once an epoch
  assert not np.array_equal(epoch0, epoch1)  # in another order
  # The same example in two epochs is augmented with different keys.
  first = {int(x): seen[s]["image"][i] for s in range(per_epoch)
           for i, x in enumerate(seen[s]["label"])}
  second = {int(x): seen[s]["image"][i] for s in range(per_epoch, 2 * per_epoch)
            for i, x in enumerate(seen[s]["label"])}
  differ = sum(not np.array_equal(first[k], second[k]) for k in range(n))
  assert differ > n // 2
  # A resume at step 7 rebuilds exactly the batch the uninterrupted run saw there.
  _, again = batch_at(7)
  np.testing.assert_array_equal(again["image"], seen[7]["image"])
  np.testing.assert_array_equal(again["label"], seen[7]["label"])
