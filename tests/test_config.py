"""Named configs, what every key means (`--mode=config`), and the closest keys to a misspelt one."""

import pathlib

import pytest
from conftest import run_cli

from tlflax import config as config_lib
from tlflax.config import cli, files, reference
from tlflax.errors import UserError
from tlflax.train import checks

REPO = pathlib.Path(__file__).resolve().parent.parent


def _load(name: str, arg: str | None = None):
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, files.configs_dir() / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def test_shipped_configs_are_found_by_name_and_paths_pass_through(tmp_path):
  assert files.named_configs() == ["cifar10_to_cifar100", "cifar10_to_cifar100_arms",
                                 "imagenet_to_cifar100", "lr_sweep", "smoke"]
  assert files.configs_dir().resolve() == (REPO / "configs").resolve()
  assert files.config_path("smoke") == str(files.configs_dir() / "smoke.py")
  assert files.config_path("cifar10_to_cifar100:val") == \
      f"{files.configs_dir() / 'cifar10_to_cifar100.py'}:val"
  own = tmp_path / "mine.py"
  own.write_text("")
  for value in (str(own), "configs/smoke.py", "configs/smoke.py:val", "x/y.py"):
    assert files.config_path(value) == value
  with pytest.raises(UserError, match=r"no config named 'cifar'.*use one of cifar10_to_cifar100,"):
    files.config_path("cifar")
  # Loaded once, by cli.load: the same config as the file's get_config, its argument passed on.
  assert cli.load("smoke").to_dict() == _load("smoke").to_dict()
  assert cli.load("cifar10_to_cifar100:val").target.val_split == "train[90%:]"


@pytest.mark.parametrize("name", ["smoke", "cifar10_to_cifar100", "cifar10_to_cifar100_arms",
                                  "imagenet_to_cifar100", "lr_sweep"])
def test_every_key_of_every_shipped_config_has_a_meaning(name):
  config = _load(name)
  keys = config_lib.flat_keys(config)
  assert len(keys) > 60
  missing = [k for k in keys if not config_lib.key_help(k)]
  assert missing == []
  # No meaning is left for a key that is gone: every entry of the tables is a key of the config.
  table_keys = {f"{block}.{leaf}" if block else leaf
                for block, table in config_lib.BLOCKS.items() for leaf in table}
  assert table_keys - set(keys) <= {"arms"}  # arms: its leaves are the arms' names


def test_closest_keys_to_misspelt_ones():
  config = _load("smoke")
  assert cli.closest_keys(config, "target.epoch")[0] == "target.epochs"
  assert cli.closest_keys(config, "target.learningrate")[0] == "target.learning_rate"
  assert cli.closest_keys(config, "checkpoint.every_step")[0] == "checkpoint.every_steps"
  assert "data.device_budget_gb" in cli.closest_keys(config, "data.device_budget")
  assert cli.closest_keys(config, "zzzzzz") == []


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


def test_the_config_reference_in_docs_is_generated_from_the_tables():
  """docs/config.md is `python -m tlflax.config`'s output: regenerate it when a key changes."""
  doc = (REPO / "docs" / "config.md").read_text()
  assert doc == reference.markdown()
  base = config_lib.flat_keys(config_lib.base_config())
  for key in base:
    if not key.startswith("arms."):
      assert f"| `{key}` |" in doc, key
  assert "| `target.min_steps` | `2000` |" in doc and "| `source.epochs` | `30` |" in doc


def test_the_imagenet_config_fine_tunes_a_resnet50_from_hub_weights():
  config = _load("imagenet_to_cifar100")
  checks.validate(config)
  checks.arm_rules(config)
  assert (config.model.name, config.transfer.init_from) == ("resnet50_imagenet",
                                                            "hf://timm/resnet50.tv_in1k")
  assert (config.target.image_size, config.target.learning_rate) == (128, 0.01)
  assert _load("imagenet_to_cifar100", "val").target.val_split == "train[90%:]"


def test_an_arm_name_with_a_dot_is_one_line_naming_the_fix(tmp_path):
  """ml_collections reads a '.' as nesting: an arm named 'lr-0.01' is refused where the config
  file builds it, in one line, with a name that works."""
  file = tmp_path / "sweep.py"
  file.write_text("from tlflax import config as config_lib\n\n\ndef get_config():\n"
                  "  c = config_lib.base_config()\n"
                  "  c.arms = config_lib.arms_config({'lr-0.01': {}, 'full': {}})\n"
                  "  return c\n")
  with pytest.raises(UserError) as e:
    cli.load(str(file))
  assert "an arm named 'lr-0.01'" in str(e.value) and "'lr-001'" in str(e.value)
  assert "\n" not in str(e.value)
  result = run_cli(["--mode=config", f"--config={file}"], tmp_path)
  assert result.returncode == 2 and result.stderr.count("tlflax: error:") == 1
  assert "Traceback" not in result.stderr
