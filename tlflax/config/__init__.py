"""The config layer: every key's default and meaning (`keys`), the blocks the files in `configs/`
are built from (`build`), the values no run could use (`validate`), `--config` and its overrides
on the command line (`cli`), the config files and the shipped ones (`files`), and docs/config.md
(`reference`, `python -m tlflax.config`).

May import: `tlflax.errors`, `tlflax.parallel`, and nothing else of tlflax: every layer above reads
its keys, none of them is read from here.

The names config files use are re-exported, so `from tlflax import config as config_lib;
config_lib.base_config()` works as it always did, and `config_lib.shipped("smoke")` starts from a
shipped config.
"""

from tlflax.config.build import (
  HOLDOUT,
  arm_names,
  arms_config,
  base_config,
  budgets,
  data_config,
  holdout,
  model_config,
  phase_config,
  transfer_config,
  with_arm,
  with_budget,
)
from tlflax.config.files import shipped
from tlflax.config.keys import BLOCKS, flat_keys, key_help
from tlflax.config.validate import validate

__all__ = ["BLOCKS", "HOLDOUT", "arm_names", "arms_config", "base_config", "budgets",
           "data_config", "flat_keys", "holdout", "key_help", "model_config", "phase_config",
           "shipped", "transfer_config", "validate", "with_arm", "with_budget"]
