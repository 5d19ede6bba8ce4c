"""Named configs, what every key means (`--mode=config`), and the closest keys to a misspelt one."""

import pathlib

import pytest
from conftest import run_cli

from tlflax import config as config_lib
from tlflax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str, arg: str | None = None):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, config_lib.configs_dir() / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def test_shipped_configs_are_found_by_name_and_paths_pass_through(tmp_path):
  assert config_lib.named_configs() == ["cifar10_to_cifar100", "cifar10_to_cifar100_arms", "smoke"]
  assert config_lib.configs_dir().resolve() == (REPO / "configs").resolve()
  assert config_lib.config_path("smoke") == str(config_lib.configs_dir() / "smoke.py")
  assert config_lib.config_path("cifar10_to_cifar100:val") == \
      f"{config_lib.configs_dir() / 'cifar10_to_cifar100.py'}:val"
  own = tmp_path / "mine.py"
  own.write_text("")
  for value in (str(own), "configs/smoke.py", "configs/smoke.py:val", "x/y.py"):
    assert config_lib.config_path(value) == value
  with pytest.raises(UserError, match=r"no config named 'cifar'.*use one of cifar10_to_cifar100,"):
    config_lib.config_path("cifar")


@pytest.mark.parametrize("name", ["smoke", "cifar10_to_cifar100", "cifar10_to_cifar100_arms"])
def test_every_key_of_every_shipped_config_has_a_meaning(name):
  config = _load(name)
  keys = config_lib.flat_keys(config)
  assert len(keys) > 60
  missing = [k for k in keys if not config_lib.key_help(k)]
  assert missing == []
  assert not set(config_lib.KEY_HELP) - set(keys) - {"arms"}  # no meaning for a key that is gone


def test_closest_keys_to_misspelt_ones():
  config = _load("smoke")
  assert config_lib.closest_keys(config, "target.epoch")[0] == "target.epochs"
  assert config_lib.closest_keys(config, "target.learningrate")[0] == "target.learning_rate"
  assert config_lib.closest_keys(config, "checkpoint.every_step")[0] == "checkpoint.every_steps"
  assert "data.device_budget_gb" in config_lib.closest_keys(config, "data.device_budget")
  assert config_lib.closest_keys(config, "zzzzzz") == []


def test_mode_config_prints_every_key_with_value_and_meaning(tmp_path):
  result = run_cli(["--mode=config", "--config=smoke",
                    "--config.target.epochs=7", "--config.target.resize=center_crop",
                    f"--workdir={tmp_path / 'never'}"], tmp_path, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  rows = {}
  for line in result.stdout.splitlines():
    key, rest = line.split(None, 1)
    value, _, meaning = rest.partition("  # ")
    rows[key] = (value.strip(), meaning.strip())
  keys = config_lib.flat_keys(_load("smoke"))
  assert sorted(rows) == sorted(keys)
  assert rows["target.epochs"] == ("7", "target: epochs to train")
  assert rows["target.resize"][0] == "'center_crop'"
  assert rows["source.epochs"][0] == "3"
  assert rows["arms.full"] == ("{}", "arm full: config.transfer as it is")
  assert all(meaning for _, meaning in rows.values())
  assert not (tmp_path / "never").exists()  # nothing ran, nothing was written
