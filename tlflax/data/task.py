"""A training phase's task: its splits loaded (tfds, folders or synthetic), adapted to the model's
input (grey -> RGB, resize), balanced to a label budget, with the classes and the input statistics
the run normalises with. What the devices do with a split is `batches.py`."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from tlflax.data import sources
from tlflax.errors import SplitError, require, within


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in host memory: uint8 images (N, H, W, C) and int32 labels (N,)."""

  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset ready for training: adapted splits and the per-channel statistics the images are
  normalised with (the train split's own, or a source run's for transfer)."""

  name: str
  train: Split
  test: Split
  num_classes: int
  mean: np.ndarray  # (3,), in [0, 1] units
  std: np.ndarray
  val: Split | None = None  # held out for model selection (phase.val_split), if any
  class_names: tuple[str, ...] = ()  # label i's name, where the dataset has names


# ------------------------------------------------------------------------------------------------
# Split strings
# ------------------------------------------------------------------------------------------------

def _slice_bounds(split: str, sizes: dict[str, int]) -> tuple[str, int, int]:
  return sources.slice_bounds(split, sizes, "a synthetic dataset")


# ------------------------------------------------------------------------------------------------
# Synthetic datasets: classes built from shared visual primitives
# ------------------------------------------------------------------------------------------------

SYNTHETIC = {"synthetic10": 10, "synthetic100": 100}
SYNTHETIC_SIZES = {"train": 50_000, "test": 10_000}
_NUM_PRIMITIVES = 10
_PATCH = 12
_CHUNK = 256
_PALETTE = np.array([
    [0.95, 0.25, 0.2], [0.2, 0.8, 0.3], [0.25, 0.4, 0.95], [0.95, 0.85, 0.2], [0.85, 0.3, 0.9],
    [0.2, 0.85, 0.9], [0.95, 0.6, 0.2], [0.6, 0.95, 0.6], [0.9, 0.9, 0.9], [0.55, 0.35, 0.2]])


@functools.cache
def _primitives() -> np.ndarray:
  """Ten fixed coloured shapes (stripes, checks, disc, ring, cross, ...), (10, P, P, 4) RGBA."""
  v, u = np.meshgrid(np.linspace(-1, 1, _PATCH), np.linspace(-1, 1, _PATCH), indexing="ij")
  r = np.hypot(u, v)
  masks = [
      np.sin(3 * np.pi * v) > 0,                       # horizontal stripes
      np.sin(3 * np.pi * u) > 0,                       # vertical stripes
      np.sin(2.2 * np.pi * (u + v)) > 0,               # diagonal stripes
      np.sin(2.2 * np.pi * (u - v)) > 0,               # anti-diagonal stripes
      np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v) > 0,  # checkerboard
      r < 0.75,                                        # disc
      np.abs(r - 0.6) < 0.22,                          # ring
      (np.abs(u) < 0.25) | (np.abs(v) < 0.25),         # plus
      np.maximum(np.abs(u), np.abs(v)) > 0.62,         # square outline
      (np.abs(u - v) < 0.3) | (np.abs(u + v) < 0.3),   # X
  ]
  out = np.zeros((_NUM_PRIMITIVES, _PATCH, _PATCH, 4))
  for k, mask in enumerate(masks):
    out[k, ..., :3] = _PALETTE[k]
    out[k, ..., 3] = mask
  return out


def _class_primitives(num_classes: int, label: int) -> tuple[int, int, bool]:
  """(first, second, stacked): 10-class labels repeat one primitive anywhere; 100-class labels
  put primitive label // 10 in the top half and label % 10 in the bottom half."""
  if num_classes == 10:
    return label, label, False
  return label // 10, label % 10, True


def _synthetic_chunk(num_classes: int, split_id: int, chunk: int, seed: int) -> Split:
  """Renders examples [chunk * 256, (chunk + 1) * 256) of a split: noisy background, two shapes."""
  rng = np.random.default_rng([seed, num_classes, split_id, chunk])
  size, prims = 32, _primitives()
  labels = rng.integers(0, num_classes, _CHUNK).astype(np.int32)
  background = rng.uniform(0.0, 0.45, (_CHUNK, 1, 1, 3))
  images = background + rng.normal(0.0, 0.08, (_CHUNK, size, size, 3))
  gains = rng.uniform(0.65, 1.0, (_CHUNK, 2))
  corners = rng.integers(0, size - _PATCH + 1, (_CHUNK, 2, 2))
  for i, label in enumerate(labels):
    first, second, stacked = _class_primitives(num_classes, int(label))
    for slot, k in enumerate((first, second)):
      y, x = corners[i, slot]
      if stacked:  # keep each primitive in its own half
        y = y // 2 + (size // 2 if slot else 0) - (_PATCH // 2 if slot else 0)
        y = int(np.clip(y, 0, size - _PATCH))
      alpha = prims[k, ..., 3:]
      window = images[i, y:y + _PATCH, x:x + _PATCH]
      window[...] = (1 - alpha) * window + alpha * gains[i, slot] * prims[k, ..., :3]
  images = np.clip(np.round(images * 255), 0, 255).astype(np.uint8)
  return Split(images, labels)


def synthetic_split(name: str, split: str, seed: int = 0) -> Split:
  """A procedurally generated split ('synthetic10' / 'synthetic100'), deterministic per seed.

  Both datasets draw on the same ten primitives, so features learned on one help the other.
  Examples are generated in fixed chunks, so 'train[:1000]' is a prefix of 'train'.
  """
  require(name in SYNTHETIC, f"unknown synthetic dataset {name!r}: use one of {sorted(SYNTHETIC)}")
  base, start, stop = _slice_bounds(split, SYNTHETIC_SIZES)
  split_id = sorted(SYNTHETIC_SIZES).index(base)
  chunks = [_synthetic_chunk(SYNTHETIC[name], split_id, c, seed)
            for c in range(start // _CHUNK, (stop - 1) // _CHUNK + 1)]
  offset = (start // _CHUNK) * _CHUNK
  images = np.concatenate([c.images for c in chunks])[start - offset:stop - offset]
  labels = np.concatenate([c.labels for c in chunks])[start - offset:stop - offset]
  return Split(images, labels)


# ------------------------------------------------------------------------------------------------
# Adapting and normalising
# ------------------------------------------------------------------------------------------------


def balanced_subset(split: Split, examples_per_class: int, num_classes: int, seed: int) -> Split:
  """Keeps `examples_per_class` examples of every class, chosen per seed, in dataset order."""
  rng = np.random.default_rng(seed)
  keep = []
  for c in range(num_classes):
    idx = np.flatnonzero(split.labels == c)
    require(len(idx) >= examples_per_class,
            f"examples_per_class={examples_per_class} but class {c} has only {len(idx)} "
            "examples in this split: lower examples_per_class or widen train_split")
    keep.append(rng.permutation(idx)[:examples_per_class])
  keep = np.sort(np.concatenate(keep))
  return Split(split.images[keep], split.labels[keep])


def adapt_images(images: np.ndarray, image_size: int) -> np.ndarray:
  """Turns uint8 (N, H, W, C) images into uint8 (N, S, S, 3): grey -> RGB, bilinear resize."""
  channels = images.shape[-1]
  require(channels in (1, 3),
          f"images have {channels} channels; tlflax handles 1 (grey) or 3 (RGB)")
  if channels == 1:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[1:3] == (image_size, image_size):
    return images
  resize = jax.jit(lambda x: jnp.clip(jnp.round(jax.image.resize(
      x.astype(jnp.float32), (x.shape[0], image_size, image_size, 3), "bilinear")), 0, 255
  ).astype(jnp.uint8))
  return np.concatenate([np.asarray(resize(images[i:i + 1024]))
                         for i in range(0, len(images), 1024)])


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images, in [0, 1] units (float64 accumulation)."""
  total = np.zeros(3)
  total_sq = np.zeros(3)
  for i in range(0, len(images), 4096):
    chunk = images[i:i + 4096].reshape(-1, 3).astype(np.float64) / 255.0
    total += chunk.sum(0)
    total_sq += (chunk**2).sum(0)
  count = images.shape[0] * images.shape[1] * images.shape[2]
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
  return mean.astype(np.float32), std.astype(np.float32)


def load_split(ds_cfg, split: str, data_dir: str | None, data_cfg=None) -> sources.Loaded:
  """One split of the phase config's dataset, adapted to its `image_size` (`resize`), with the
  dataset's class count and names."""
  name = ds_cfg.dataset
  if name in SYNTHETIC:
    s = synthetic_split(name, split)
    return sources.Loaded(adapt_images(s.images, ds_cfg.image_size), s.labels, SYNTHETIC[name],
                          ())
  host = {"image_size": ds_cfg.image_size, "resize": ds_cfg.resize}
  if data_cfg is not None:  # else the sources' own: half the available memory, the temp folder
    host.update(host_budget_gb=data_cfg.host_budget_gb, spill_dir=data_cfg.spill_dir)
  if name.startswith(sources.FOLDER_PREFIX):
    return sources.folder_split(name[len(sources.FOLDER_PREFIX):], split, **host)
  return sources.tfds_split(name, split, data_dir, download=ds_cfg.download, **host)


def load_task(ds_cfg, data_dir: str | None, seed: int, data_cfg=None,
              where: str | None = None) -> Task:
  """Loads and adapts the train, test and (if named) validation splits a phase config names
  (`source` or `target`: `where`, which errors about a split name the key of, e.g.
  'config.target.val_split'). `examples_per_class` subsets the training split only. `data_cfg`
  (config.data) sets the host budget above which a decoded split is memory-mapped."""
  name = ds_cfg.dataset
  keys = ["train_split", "test_split"] + (["val_split"] if ds_cfg.val_split else [])
  loaded = []
  for key in keys:
    with within(f"config.{where}.{key}" if where else None, only=SplitError):
      loaded.append(load_split(ds_cfg, ds_cfg[key], data_dir, data_cfg))
  splits = [Split(x.images, x.labels) for x in loaded]
  num_classes, class_names = loaded[0].num_classes, loaded[0].class_names
  if ds_cfg.examples_per_class:
    splits[0] = balanced_subset(splits[0], ds_cfg.examples_per_class, num_classes, seed)
  mean, std = channel_stats(splits[0].images)
  return Task(name, splits[0], splits[1], num_classes, mean, std,
              splits[2] if len(splits) > 2 else None, class_names)
