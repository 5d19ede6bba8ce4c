"""A split on the devices: batches, augmentation, evaluation padding.

A split is loaded once into host memory as uint8 (N, H, W, 3), then kept on the devices, a full
copy on each. Each device gathers, crops, flips and normalises its own part of every batch inside
the jitted step, so a training step needs no host work and no host-to-device copy beyond the
epoch's table of example indices.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from tlflax.data.task import Split


def device_data(split: Split, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
  """What the steps read from device memory: uint8 images, int32 labels, the normalisation."""
  return {"images": split.images, "labels": split.labels,
          "mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32)}


def normalize(images: jax.Array, mean, std) -> jax.Array:
  """uint8 images to float32, standardised per channel."""
  return (images.astype(jnp.float32) / 255.0 - jnp.asarray(mean)) / jnp.asarray(std)


def augment(keys: jax.Array, images: jax.Array, crop_padding: int, flip: bool) -> jax.Array:
  """Random crop after zero padding and random horizontal flip, each example from its own key
  (uint8 in and out)."""
  h, w, c = images.shape[1:]
  p = crop_padding

  def one(key, image):
    crop_key, flip_key = jax.random.split(key)
    if p:
      offset = jax.random.randint(crop_key, (2,), 0, 2 * p + 1)
      padded = jnp.pad(image, ((p, p), (p, p), (0, 0)))
      image = jax.lax.dynamic_slice(padded, (offset[0], offset[1], 0), (h, w, c))
    if flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    return image

  return jax.vmap(one)(keys, images)


def batch_positions(size: int, axis_name: str | None) -> jax.Array:
  """Positions in the global batch of this shard's `size` examples (shard k holds block k)."""
  offset = jax.lax.axis_index(axis_name) * size if axis_name else 0
  return offset + jnp.arange(size)


def shard_train_batch(data: dict, rows: jax.Array, key: jax.Array, *, axis_name: str | None,
                      crop_padding: int, flip: bool) -> dict:
  """This shard's part of a global training batch: examples `rows` of the on-device `data`,
  augmented and normalised.

  Example j of the global batch is augmented with fold_in(key, j), so the global batch does not
  depend on how many devices or processes share it.
  """
  keys = jax.vmap(functools.partial(jax.random.fold_in, key))(
      batch_positions(rows.shape[0], axis_name))
  images = augment(keys, data["images"][rows], crop_padding, flip)
  return {"image": normalize(images, data["mean"], data["std"]), "label": data["labels"][rows]}


def shard_eval_batch(data: dict, rows: jax.Array) -> dict:
  """This shard's part of an evaluation batch; `mask` marks real examples (padding has label -1)."""
  labels = data["labels"][rows]
  return {"image": normalize(data["images"][rows], data["mean"], data["std"]), "label": labels,
          "mask": labels >= 0}


def epoch_rows(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> np.ndarray:
  """The example indices of every batch of `epoch`, (steps, batch_size): a permutation drawn from
  fold_in(key, epoch), its remainder dropped. The same on every process and device count."""
  perm = np.asarray(jax.random.permutation(jax.random.fold_in(key, epoch), num_examples))
  steps = num_examples // batch_size
  return perm[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def pad_for_eval(split: Split, batch_size: int) -> Split:
  """Pads a split to whole batches with blank images and label -1 (masked out in evaluation)."""
  pad = -len(split) % batch_size
  images = np.concatenate([split.images, np.zeros((pad,) + split.images.shape[1:], np.uint8)])
  labels = np.concatenate([split.labels, -np.ones(pad, np.int32)])
  return Split(images, labels)
