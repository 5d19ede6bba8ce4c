"""The tfds path: official CIFAR binary archives prepared by tfds's builders, loaded by tlflax."""

import numpy as np
import pytest
from conftest import (
  CIFAR10_TEST,
  CIFAR10_TRAIN_PER_FILE,
  CIFAR100_TEST,
  CIFAR100_TRAIN,
  SECRET_ENV,
  assert_nothing_secret,
  run_cli,
)

from tlflax.config import phase_config
from tlflax.data import task as task_lib
from tlflax.errors import UserError


def _pairs(images, labels):
  """Order-free view of a split: {image bytes: label}. tfds shuffles records when preparing."""
  return {img.tobytes(): int(lab) for img, lab in zip(images, labels)}


@pytest.mark.parametrize("name,classes,n_train,n_test", [
    ("cifar10", 10, 5 * CIFAR10_TRAIN_PER_FILE, CIFAR10_TEST),
    ("cifar100", 100, CIFAR100_TRAIN, CIFAR100_TEST)])
def test_cifar_loads_exactly_what_the_archive_holds(tfds_data, name, classes, n_train, n_test):
  task = task_lib.load_task(phase_config(name, 1, download=False), tfds_data["data_dir"], seed=0)
  assert task.num_classes == classes
  assert task.train.images.shape == (n_train, 32, 32, 3) and task.train.images.dtype == np.uint8
  assert task.test.images.shape == (n_test, 32, 32, 3)
  for split in ("train", "test"):
    got = getattr(task, split)
    assert got.labels.min() >= 0 and got.labels.max() < classes
    assert _pairs(got.images, got.labels) == _pairs(*tfds_data[name][split])
  source = tfds_data[name]["train"][0].reshape(-1, 3) / 255.0
  np.testing.assert_allclose(task.mean, source.mean(0), rtol=1e-5)
  np.testing.assert_allclose(task.std, source.std(0), rtol=1e-5)


def test_tfds_split_strings_and_examples_per_class(tfds_data):
  half = task_lib.load_task(phase_config("cifar10", 1, train_split="train[:50%]", download=False),
                        tfds_data["data_dir"], seed=0)
  assert len(half.train) == 5 * CIFAR10_TRAIN_PER_FILE // 2
  few = task_lib.load_task(phase_config("cifar100", 1, examples_per_class=1, download=False),
                       tfds_data["data_dir"], seed=0)
  assert sorted(few.train.labels.tolist()) == list(range(100))


def test_grey_28x28_dataset_is_adapted_to_rgb_32(tfds_data):
  task = task_lib.load_task(phase_config("tiny_grey", 1, download=False), tfds_data["data_dir"], 0)
  assert task.num_classes == 4
  assert task.train.images.shape == (40, 32, 32, 3) and task.test.images.shape == (12, 32, 32, 3)
  np.testing.assert_array_equal(task.train.images[..., 0], task.train.images[..., 1])
  assert set(task.train.labels.tolist()) == {0, 1, 2, 3}


def test_unprepared_dataset_without_download_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match=r"not prepared in .*tfds build cifar10"):
    task_lib.load_task(phase_config("cifar10", 1, download=False), str(tmp_path), seed=0)


def test_bad_or_empty_tfds_split_is_a_user_error_naming_its_key(tfds_data):
  with pytest.raises(UserError, match="in config.target.train_split: bad split 'validation'"):
    task_lib.load_task(phase_config("cifar10", 1, train_split="validation", download=False),
                   tfds_data["data_dir"], seed=0, where="target")
  with pytest.raises(UserError, match=(r"in config.source.val_split: split 'test\[30:\]' of tfds "
                                       r"dataset 'cifar10' is empty: widen the slice")):
    task_lib.load_task(phase_config("cifar10", 1, val_split="test[30:]", download=False),
                   tfds_data["data_dir"], seed=0, where="source")


def test_offline_download_fails_in_one_line_with_exit_2(tmp_path):
  """The real tfds download path, pointed at a closed local port, must end in one line."""
  result = run_cli(["--mode=scratch", "--config=configs/smoke.py",
                    "--config.target.dataset=cifar10", f"--config.data_dir={tmp_path / 'dd'}",
                    f"--workdir={tmp_path / 'w'}"], tmp_path,
                   env={"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"},
                   timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("tlflax: error:")]
  assert len(errors) == 1 and "Traceback" not in result.stderr
  assert "cifar10" in errors[0] and "tfds build cifar10" in errors[0] and str(tmp_path) in errors[0]


def test_default_config_transfer_runs_on_prepared_cifar(tfds_data, tmp_path):
  """configs/cifar10_to_cifar100.py, shrunk by overrides, on tfds-prepared CIFAR archives; a
  secret in the environment reaches neither the logs nor the run folders."""
  import json
  shrink = [f"--config.data_dir={tfds_data['data_dir']}", "--config.model.name=resnet10",
            "--config.model.width=4"]
  for phase in ("source", "target"):
    shrink += [f"--config.{phase}.{k}" for k in (
        "epochs=1", "min_steps=0", "batch_size=20", "eval_batch_size=16", "warmup_epochs=0.0",
        "download=False")]
  result = run_cli(["--mode=transfer", "--config=configs/cifar10_to_cifar100.py",
                    f"--workdir={tmp_path}", *shrink], tmp_path, env=SECRET_ENV)
  assert result.returncode == 0, result.stderr[-3000:]
  assert_nothing_secret(result, tmp_path / "pretrain", tmp_path / "transfer")
  pretrain = json.loads((tmp_path / "pretrain" / "summary.json").read_text())
  assert pretrain["dataset"] == "cifar10" and pretrain["train_examples"] == 60
  assert pretrain["final"]["test_count"] == CIFAR10_TEST
  transfer = json.loads((tmp_path / "transfer" / "summary.json").read_text())
  assert transfer["dataset"] == "cifar100" and transfer["final"]["test_count"] == CIFAR100_TEST
  assert "kept 60 leaves, re-initialised 2 (params/head/bias, params/head/kernel)" in result.stderr
