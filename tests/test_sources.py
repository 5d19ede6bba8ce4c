"""Where images come from: variable-size tfds datasets resized in the pipeline, folders of the
user's own images, splits too large for RAM memory-mapped."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from conftest import (
  SECRET_ENV,
  TINY_SIZES_COLOURS,
  assert_nothing_secret,
  run_cli,
  tiny_sizes_image,
)
from PIL import Image

from tlflax.config import phase_config
from tlflax.data import sources
from tlflax.data import task as task_lib
from tlflax.errors import UserError

COLOURS = {"blue": (30, 30, 200), "green": (30, 200, 30), "red": (200, 30, 30)}


def _near(images: np.ndarray, colour, tol: int = 12) -> np.ndarray:
  """Per image, the fraction of pixels within `tol` of `colour` in every channel."""
  return np.all(np.abs(images.astype(int) - np.array(colour)) <= tol, axis=-1).mean(axis=(1, 2))


def test_variable_size_tfds_images_are_squashed_or_center_cropped(tfds_data):
  """tiny_sizes: 20-89 pixel sides, any aspect ratio; the class colour fills a centred square
  of the short side, white the rest."""
  def load(resize):
    return task_lib.load_task(phase_config("tiny_sizes", 1, image_size=16, resize=resize,
                                       download=False), tfds_data["data_dir"], 0)

  crop, squash = load("center_crop"), load("squash")
  for task in (crop, squash):
    assert task.train.images.shape == (30, 16, 16, 3) and task.test.images.shape == (9, 16, 16, 3)
    assert task.class_names == ("red", "green", "blue") and task.num_classes == 3
  np.testing.assert_array_equal(crop.train.labels, squash.train.labels)
  colour = np.array(TINY_SIZES_COLOURS)[crop.train.labels]
  # center_crop keeps only the coloured square; squash keeps the white sides, squeezed.
  assert min(_near(img[None], c)[0] for img, c in zip(crop.train.images, colour)) > 0.85
  white = np.sort(_near(squash.train.images, (255, 255, 255), tol=40))
  rng = np.random.default_rng(0)
  generated = [tiny_sizes_image(rng, i % 3) for i in range(30)]
  expected = np.sort([1 - min(g.shape[:2]) ** 2 / (g.shape[0] * g.shape[1]) for g in generated])
  assert np.abs(white - expected).max() < 0.15, (white, expected)
  assert expected.max() > 0.5  # some images are far from square


def test_a_split_above_the_host_budget_is_memory_mapped_with_the_same_pixels(tfds_data, tmp_path):
  phase = phase_config("tiny_sizes", 1, image_size=16, download=False)
  spill = ml_collections.ConfigDict({"host_budget_gb": 1e-9, "spill_dir": str(tmp_path)})
  in_ram = task_lib.load_task(phase, tfds_data["data_dir"], 0)
  mapped = task_lib.load_task(phase, tfds_data["data_dir"], 0, spill)
  assert isinstance(mapped.train.images, np.memmap)
  assert not isinstance(in_ram.train.images, np.memmap)
  np.testing.assert_array_equal(mapped.train.images, in_ram.train.images)
  np.testing.assert_array_equal(mapped.test.labels, in_ram.test.labels)
  assert list(tmp_path.iterdir()) == []  # unlinked at once: nothing is left behind


def _write_images(folder, name: str, count: int, rng, start: int = 0) -> None:
  """`count` images of class `name` (its colour plus noise), several sizes; PNG, one in three
  JPEG, one in five grey."""
  folder.mkdir(parents=True, exist_ok=True)
  for i in range(start, start + count):
    h, w = (int(v) for v in rng.integers(12, 40, 2))
    pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    if i % 5 == 4:
      image = image.convert("L")
    suffix = ".jpg" if i % 3 == 2 else ".png"
    image.save(folder / f"img{i:03d}{suffix.upper() if i % 7 == 6 else suffix}")


def _check_colours(task) -> None:
  greys = []
  for split in (task.train, task.test):
    means = split.images.reshape(len(split.images), -1, 3).mean(axis=1)
    grey = np.ptp(means, axis=1) < 2
    for mean, label, is_grey in zip(means, split.labels, grey):
      if not is_grey:
        want = np.argmax(COLOURS[task.class_names[label]])
        assert np.argmax(mean) == want, (mean, task.class_names[label])
    greys += grey.tolist()
  assert 0 < sum(greys) < len(greys)  # grey files became RGB with equal channels


def test_a_flat_folder_is_split_80_20_per_class_with_folder_names_as_classes(tmp_path):
  rng = np.random.default_rng(0)
  for name in COLOURS:
    _write_images(tmp_path / "root" / name, name, 10, rng)
  (tmp_path / "root" / "notes.txt").write_text("not an image")
  phase = phase_config(f"folder:{tmp_path / 'root'}", 1, image_size=16)
  task = task_lib.load_task(phase, None, 0)
  assert task.class_names == ("blue", "green", "red") and task.num_classes == 3
  assert task.train.images.shape == (24, 16, 16, 3) and task.test.images.shape == (6, 16, 16, 3)
  assert np.bincount(task.train.labels).tolist() == [8, 8, 8]
  assert np.bincount(task.test.labels).tolist() == [2, 2, 2]
  _check_colours(task)
  again = task_lib.load_task(phase, None, 1)  # the split does not depend on the run's seed
  np.testing.assert_array_equal(again.test.images, task.test.images)
  half = task_lib.load_task(phase_config(f"folder:{tmp_path / 'root'}", 1, image_size=16,
                                     train_split="train[:50%]", val_split="train[50%:]"), None, 0)
  assert len(half.train) == len(half.val) == 12
  assert len(set(half.val.labels.tolist())) == 3  # a slice draws from every class


def test_train_and_test_sub_folders_are_the_splits(tmp_path):
  rng = np.random.default_rng(1)
  for name in ("green", "red"):
    _write_images(tmp_path / "root" / "train" / name, name, 6, rng)
    _write_images(tmp_path / "root" / "test" / name, name, 3, rng, start=10)
  _write_images(tmp_path / "root" / "train" / "blue", "blue", 5, rng)  # no test images of blue
  task = task_lib.load_task(phase_config(f"folder:{tmp_path / 'root'}", 1, image_size=8), None, 0)
  assert task.class_names == ("blue", "green", "red")
  assert np.bincount(task.train.labels, minlength=3).tolist() == [5, 6, 6]
  assert np.bincount(task.test.labels, minlength=3).tolist() == [0, 3, 3]
  _check_colours(task)


def test_folder_mistakes_are_one_line_user_errors(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    sources.folder_files(str(tmp_path / "missing"))
  _write_images(tmp_path / "one" / "red", "red", 2, np.random.default_rng(0))
  with pytest.raises(UserError, match="holds 1 class folder"):
    sources.folder_files(str(tmp_path / "one"))
  _write_images(tmp_path / "bad" / "red", "red", 3, np.random.default_rng(0))
  _write_images(tmp_path / "bad" / "blue", "blue", 3, np.random.default_rng(0))
  (tmp_path / "bad" / "red" / "img000.png").write_bytes(b"not a png")
  with pytest.raises(UserError, match=r"cannot decode the image .*red/img000\.png of the folder dataset"):
    for split in ("train", "test"):
      sources.folder_split(str(tmp_path / "bad"), split, image_size=8)
  with pytest.raises(UserError, match="bad split 'validation'"):
    sources.folder_split(str(tmp_path / "bad"), "validation", image_size=8)


def test_a_folder_dataset_trains_through_the_cli_names_its_classes_and_leaks_no_secret(tmp_path):
  rng = np.random.default_rng(2)
  for name in COLOURS:
    _write_images(tmp_path / "pets" / name, name, 10, rng)
  workdir = tmp_path / "w"
  result = run_cli(["--mode=scratch", "--config=smoke", f"--workdir={workdir}",
                    f"--config.target.dataset=folder:{tmp_path / 'pets'}",
                    "--config.target.val_split=", "--config.target.image_size=16",
                    "--config.target.resize=center_crop", "--config.model.name=resnet10",
                    "--config.model.width=4", "--config.target.epochs=2",
                    "--config.target.batch_size=8", "--config.target.eval_batch_size=8"],
                   tmp_path, env=SECRET_ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_nothing_secret(result, workdir)
  summary = json.loads((workdir / "scratch" / "summary.json").read_text())
  assert summary["class_names"] == ["blue", "green", "red"]
  assert (summary["num_classes"], summary["train_examples"], summary["test_examples"]) == (3, 24, 6)
  assert summary["final"]["test_count"] == 6 and summary["pipeline"] == "device"


def test_tensorflow_loads_without_its_cpp_start_up_notices_and_keeps_other_lines():
  code = ("import os, sys\n"
          "from tlflax.data import sources\n"
          "with sources._without_startup_noise():\n"
          "  os.write(2, b'I0000 port.cc:153] oneDNN custom operations are on.\\nkept line\\n')\n"
          "sources.import_tfds()\n"
          "print('after', file=sys.stderr)\n")
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "oneDNN" not in out.stderr and "absl::InitializeLog" not in out.stderr
  assert out.stderr.splitlines()[-2:] == ["kept line", "after"]
