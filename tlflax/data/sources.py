"""Where images come from: tfds datasets and folders of the user's own images.

Both are read through one tf.data pipeline that decodes, turns grey into RGB and resizes every
image to `image_size` ('squash', or 'center_crop': the short side to `image_size`, then the middle)
in chunks, so a split is never held at its full resolution; the result is a uint8
(N, S, S, 3) array in RAM, or, when it exceeds the host budget, in a memory-mapped temporary
file (deleted when the run ends, even after kill -9).

A folder dataset is `folder:/path/to/root` with one sub-folder per class (JPEG or PNG files). With
`train/` and `test/` (any split names) sub-trees, each is a split; without them, a fixed seeded
80/20 split of every class gives `train` and `test`. Classes are the sorted folder names. Split
strings may be sliced (`train[:90%]`); the files of a split are in a fixed shuffled order, so a
slice draws from every class.
"""

import contextlib
import dataclasses
import os
import pathlib
import re
import sys
import tempfile

import numpy as np

from tlflax.errors import SplitError, UserError, require

FOLDER_PREFIX = "folder:"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_TEST_FRACTION = 0.2
_FOLDER_SEED = 0  # the split and order of a folder dataset; fixed, so every run sees the same
_CHUNK = 256


@dataclasses.dataclass(frozen=True)
class Loaded:
  """A split read from a source: uint8 (N, S, S, 3) images, int32 labels, and the dataset's
  number of classes and class names."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int
  class_names: tuple[str, ...]


# What TensorFlow's C++ side prints while it loads, before any setting can silence it (absl
# writes to file descriptor 2 until it is initialised; TF_CPP_MIN_LOG_LEVEL comes too late).
_STARTUP_NOISE = re.compile(r"All log messages before absl::InitializeLog|oneDNN custom operations "
                            r"are on|cpu_feature_guard|This TensorFlow binary is optimized")


@contextlib.contextmanager
def _without_startup_noise():
  """Holds back what is written to file descriptor 2 while TensorFlow loads, then passes on
  every line but its start-up notices (warnings and errors still reach the user)."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as caught:
    os.dup2(caught.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      caught.seek(0)
      kept = [line for line in caught.read().decode(errors="replace").splitlines()
              if not _STARTUP_NOISE.search(line)]
      if kept:
        print("\n".join(kept), file=sys.stderr, flush=True)


def import_tfds():
  """Imports tfds with TensorFlow kept off every GPU, so it never takes memory from JAX, and
  without its C++ start-up notices."""
  # Lazily, here alone: TensorFlow takes seconds to import and must be kept off the GPUs first;
  # runs on synthetic data or cached features never import it.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  with _without_startup_noise():
    try:
      import tensorflow as tf
      tf.config.set_visible_devices([], "GPU")
    except ImportError:
      pass  # reading prepared data works without TensorFlow for some formats
    except RuntimeError:
      pass  # TF already initialised its devices in this process; nothing left to hide
    import tensorflow_datasets as tfds
  return tfds


def tensorflow():
  """TensorFlow, imported as `import_tfds` imports it (off every GPU)."""
  import_tfds()
  import tensorflow as tf  # lazily, as in import_tfds
  return tf


# ------------------------------------------------------------------------------------------------
# Resizing and collecting, in tf.data
# ------------------------------------------------------------------------------------------------


def image_fitter(size: int, resize: str):
  """A function for `tf.data` maps: a tf uint8 (H, W, C) image as uint8 (size, size, 3): grey ->
  RGB, then 'squash' (bilinear, antialiased) or 'center_crop' (short side to `size`, keeping the
  aspect ratio, then the middle size x size). An image that already has the size is returned
  untouched.

  TensorFlow is imported here, once, outside the traced function: code that tf.data traces must
  have no Python side effects, or AutoGraph tries to convert them and logs their repr (an
  `os.environ` method's repr is every environment variable). Maps use it through `_traced`.
  """
  tf = tensorflow()

  def resized(image, h, w):
    if resize == "center_crop":
      scale = size / tf.cast(tf.minimum(h, w), tf.float32)
      nh = tf.maximum(size, tf.cast(tf.math.round(tf.cast(h, tf.float32) * scale), tf.int32))
      nw = tf.maximum(size, tf.cast(tf.math.round(tf.cast(w, tf.float32) * scale), tf.int32))
      out = tf.image.resize(image, tf.stack([nh, nw]), "bilinear", antialias=True)
      top, left = (nh - size) // 2, (nw - size) // 2
      out = out[top:top + size, left:left + size]
    else:
      out = tf.image.resize(image, (size, size), "bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.math.round(out), 0, 255), tf.uint8)

  def fit(image):
    image = tf.convert_to_tensor(image)
    if image.shape.rank == 2:
      image = image[..., None]
    channels = image.shape[-1]
    if channels == 1:
      image = tf.image.grayscale_to_rgb(image)
    elif channels == 4:
      image = image[..., :3]
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    same = tf.logical_and(tf.equal(h, size), tf.equal(w, size))
    out = tf.cond(same, lambda: tf.cast(image, tf.uint8), lambda: resized(image, h, w))
    return tf.ensure_shape(out, (size, size, 3))

  return fit


def _traced(fn):
  """`fn` as tf.data traces it, without AutoGraph: tlflax's map functions are plain graph code
  (tf.cond, no Python control flow on tensors), so there is nothing to convert, and nothing of
  the process (its environment included) can end up in a conversion warning."""
  return tensorflow().autograph.experimental.do_not_convert(fn)


def available_bytes() -> int:
  """The host memory available now (MemAvailable; the physical memory where that is unknown)."""
  try:
    with open("/proc/meminfo") as f:
      info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    return info.get("MemAvailable", info["MemTotal"])
  except (OSError, KeyError, ValueError, IndexError):
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def host_budget_bytes(host_budget_gb: float) -> int:
  """The RAM a decoded split may take: `host_budget_gb`, or half of what is available now."""
  return int(host_budget_gb * 2**30) if host_budget_gb else available_bytes() // 2


def host_array(shape: tuple, host_budget_gb: float = 0.0, spill_dir: str = "") -> np.ndarray:
  """An empty uint8 array of `shape`: in RAM when it fits the host budget, else memory-mapped
  on an already-unlinked temporary file in `spill_dir` (the OS frees it when the run ends)."""
  nbytes = int(np.prod(shape))
  if nbytes <= host_budget_bytes(host_budget_gb):
    return np.empty(shape, np.uint8)
  folder = os.path.expanduser(spill_dir) if spill_dir else None
  try:
    handle = tempfile.TemporaryFile(dir=folder, prefix="tlflax-split-")  # noqa: SIM115 - the memmap owns it
    return np.memmap(handle, np.uint8, "w+", shape=shape)
  except OSError as e:
    raise UserError(f"a decoded split of {nbytes / 2**30:.1f} GiB exceeds the host budget and "
                    f"cannot be memory-mapped in {folder or tempfile.gettempdir()} ({e.strerror}):"
                    " set --config.data.spill_dir to a folder with room, or raise "
                    "--config.data.host_budget_gb") from e


def collect(ds, count: int, size: int, host_budget_gb: float, spill_dir: str
            ) -> tuple[np.ndarray, np.ndarray]:
  """Runs a tf.data dataset of (uint8 image (S, S, 3), label) pairs in chunks into host arrays."""
  tfds = import_tfds()
  images = host_array((count, size, size, 3), host_budget_gb, spill_dir)
  labels = np.empty((count,), np.int32)
  done = 0
  for chunk_images, chunk_labels in tfds.as_numpy(ds.batch(_CHUNK).prefetch(2)):
    n = len(chunk_labels)
    require(done + n <= count, f"a split yielded more than the {count} examples it declares")
    images[done:done + n] = chunk_images
    labels[done:done + n] = chunk_labels
    done += n
  require(done == count, f"a split yielded {done} examples, not the {count} it declares")
  return images, labels


# ------------------------------------------------------------------------------------------------
# tfds
# ------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _few_download_retries(retries: int = 4):
  """tfds retries a failed download 10 times with exponential backoff (~3.5 minutes offline);
  4 retries (~3 s of backoff) still ride out a blip but let an offline machine fail fast."""
  from tensorflow_datasets.core.download import downloader  # lazily: see import_tfds
  saved = downloader.MAX_RETRIES
  downloader.MAX_RETRIES = retries
  try:
    yield
  finally:
    downloader.MAX_RETRIES = saved


def _prepare_hint(name: str, data_dir: str) -> str:
  return (f"prepare it on a machine with network access (`tfds build {name} --data_dir=DIR`) "
          f"and copy DIR/{name} into {data_dir}")


def tfds_builder(name: str, data_dir: str | None, download: bool = True):
  """Returns a prepared tfds builder, downloading and preparing it if allowed and possible."""
  tfds = import_tfds()
  data_dir = os.path.expanduser(data_dir) if data_dir else tfds.core.constants.DATA_DIR
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # DatasetNotFoundError and friends: one line, no traceback
    raise UserError(f"tfds dataset {name!r} is unknown and not prepared in {data_dir}: "
                    f"check the name, or {_prepare_hint(name, data_dir)}") from e
  if not builder.is_prepared():
    if not download:
      raise UserError(f"tfds dataset {name!r} is not prepared in {data_dir}: "
                      + _prepare_hint(name, data_dir))
    try:
      with _few_download_retries():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    except Exception as e:
      reason = " ".join(str(e).split(" (Caused by")[0].split())[:200]
      raise UserError(f"tfds dataset {name!r} is not prepared in {data_dir} and could not be "
                      f"downloaded ({type(e).__name__}: {reason}); "
                      + _prepare_hint(name, data_dir)) from e
  features = builder.info.features
  require("image" in features and "label" in features,
          f"tfds dataset {name!r} has features {sorted(features)}; tlflax needs 'image' and "
          "'label': choose an image-classification dataset")
  require(hasattr(features["label"], "num_classes"),
          f"tfds dataset {name!r} has a 'label' that is not a class label "
          f"({type(features['label']).__name__}): choose an image-classification dataset")
  return builder


def tfds_split(name: str, split: str, data_dir: str | None, *, image_size: int,
               resize: str = "squash", download: bool = True, host_budget_gb: float = 0.0,
               spill_dir: str = "") -> Loaded:
  """Reads a tfds split, every image fitted to `image_size`, into host memory."""
  builder = tfds_builder(name, data_dir, download)
  try:
    count = builder.info.splits[split].num_examples
    ds = builder.as_dataset(split=split, shuffle_files=False) if count else None
  except Exception as e:
    raise SplitError(f"bad split {split!r} for tfds dataset {name!r} (splits: "
                    f"{sorted(builder.info.splits)}): use a tfds split string such as "
                    "'train' or 'train[:10%]'") from e
  if count == 0:
    raise SplitError(f"split {split!r} of tfds dataset {name!r} is empty: widen the slice")
  dtype = getattr(builder.info.features["image"], "np_dtype", np.uint8)
  require(np.dtype(dtype) == np.uint8,
          f"tfds dataset {name!r} has images of dtype {np.dtype(dtype)}; tlflax reads uint8 "
          "images: choose an image-classification dataset")
  tf, fit = tensorflow(), image_fitter(image_size, resize)
  ds = ds.map(_traced(lambda ex: (fit(ex["image"]), ex["label"])),
              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  images, labels = collect(ds, count, image_size, host_budget_gb, spill_dir)
  label = builder.info.features["label"]
  return Loaded(images, labels, label.num_classes, tuple(label.names))



# ------------------------------------------------------------------------------------------------
# Folders of images
# ------------------------------------------------------------------------------------------------

_SPLIT_RE = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def slice_bounds(split: str, sizes: dict[str, int], what: str) -> tuple[str, int, int]:
  """Parses 'train', 'test[:500]', 'train[10%:]' against the base split sizes."""
  m = _SPLIT_RE.match(split.replace(" ", ""))
  if not m or m.group(1) not in sizes:
    raise SplitError(f"bad split {split!r} for {what}: use one of {sorted(sizes)} optionally "
                    "sliced, e.g. 'train[:2000]' or 'test[50%:]'")
  base, lo, hi = m.groups()
  n = sizes[base]

  def bound(text, default):
    if text is None:
      return default
    value = round(n * int(text[:-1]) / 100) if text.endswith("%") else int(text)
    return min(max(value + n if value < 0 else value, 0), n)

  start, stop = bound(lo, 0), bound(hi, n)
  if stop <= start:
    raise SplitError(f"split {split!r} is empty: widen the slice")
  return base, start, stop


def _images_in(folder: pathlib.Path) -> list[str]:
  return sorted(str(p) for p in folder.iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_dirs(folder: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_files(root: str) -> tuple[dict[str, list[tuple[str, int]]], tuple[str, ...]]:
  """{split: [(file, label), ...] in the split's fixed order} and the class names of a folder
  dataset (see the module docstring)."""
  path = pathlib.Path(os.path.expanduser(root))
  require(path.is_dir(), f"dataset folder {root} does not exist: pass "
          "dataset='folder:/path/to/root' with one sub-folder of images per class")
  subdirs = _class_dirs(path)
  # A split sub-tree holds class folders; a class folder holds images.
  split_dirs = [d for d in subdirs if not _images_in(d) and _class_dirs(d)]
  if split_dirs:
    classes = sorted({c.name for d in split_dirs for c in _class_dirs(d)})
    by_split = {d.name: [(f, classes.index(c.name)) for c in _class_dirs(d) for f in _images_in(c)]
                for d in split_dirs}
  else:
    classes = [d.name for d in subdirs if _images_in(d)]
    rng = np.random.default_rng(_FOLDER_SEED)
    by_split = {"train": [], "test": []}
    for label, name in enumerate(classes):
      files = list(rng.permutation(_images_in(path / name)))
      n_test = round(len(files) * FOLDER_TEST_FRACTION) if len(files) > 1 else 0
      by_split["test"] += [(str(f), label) for f in files[:n_test]]
      by_split["train"] += [(str(f), label) for f in files[n_test:]]
  require(len(classes) >= 2 and any(by_split.values()),
          f"dataset folder {root} holds {len(classes)} class folder(s) with images: it needs one "
          f"sub-folder per class (at least 2) holding {'/'.join(IMAGE_SUFFIXES)} files")
  rng = np.random.default_rng(_FOLDER_SEED + 1)
  ordered = {}
  for name, items in by_split.items():
    order = rng.permutation(len(items)) if items else []
    ordered[name] = [items[i] for i in order]
  return ordered, tuple(classes)


def _first_undecodable(files: list[str]) -> str | None:
  """The first of `files` that TensorFlow cannot decode (after a batch of them failed)."""
  tf = tensorflow()
  for file in files:
    try:
      tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
    except tf.errors.InvalidArgumentError:
      return file
  return None


def folder_split(root: str, split: str, *, image_size: int, resize: str = "squash",
                 host_budget_gb: float = 0.0, spill_dir: str = "") -> Loaded:
  """Reads a split of a folder dataset, every image fitted to `image_size`, into host memory."""
  by_split, classes = folder_files(root)
  base, start, stop = slice_bounds(split, {k: len(v) for k, v in by_split.items() if v},
                                   f"the folder dataset {root}")
  items = by_split[base][start:stop]
  tf, fit = tensorflow(), image_fitter(image_size, resize)
  files = tf.constant([f for f, _ in items])
  labels = tf.constant([label for _, label in items], tf.int32)

  def decode(file, label):
    image = tf.io.decode_image(tf.io.read_file(file), channels=3, expand_animations=False)
    return fit(image), label

  ds = tf.data.Dataset.from_tensor_slices((files, labels)).map(
      _traced(decode), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.apply(tf.data.experimental.assert_cardinality(len(items)))
  try:
    images, labels = collect(ds, len(items), image_size, host_budget_gb, spill_dir)
  except tf.errors.InvalidArgumentError as e:
    bad = _first_undecodable([f for f, _ in items])
    raise UserError(f"cannot decode the image {bad or '(unknown)'} of the folder dataset {root}: "
                    "remove it or re-save it as JPEG or PNG") from e
  return Loaded(images, labels, len(classes), classes)
