"""A sweep: the transfer's learning rate at three values, one study.

Arms override any key of `config.target` (under `target`) as well as of `config.transfer`, so a
sweep is a study whose arms differ in a hyperparameter. Here full transfer from the CIFAR-10
pretraining trains at a peak learning rate of 0.01, 0.03 and 0.1 (the seed config's), against
scratch at 0.1; each arm is its own experiment (`transfer_lr-1e-2`, ...), with its own run
folders, curves and line in the report. `:smoke` runs the same sweep on the smoke config's
synthetic data, offline (timed in docs/study.md).
"""

from tlflax import config as config_lib
from tlflax.errors import UserError

ARGS = {"smoke": "the same sweep on the smoke config's synthetic data, one seed, offline"}

# Arm names: letters, digits and '-' (ConfigDict keys have no dots).
RATES = {"lr-1e-2": 0.01, "lr-3e-2": 0.03, "lr-1e-1": 0.1}


def get_config(arg: str | None = None):
  if arg == "smoke":
    config = config_lib.shipped("smoke")  # configs/smoke.py, in a checkout or an install
    config.seeds = (0,)
  elif arg in (None, ""):
    config = config_lib.base_config()  # the seed experiment (configs/cifar10_to_cifar100.py)
  else:
    raise UserError(f"config lr_sweep takes no argument {arg!r}: use --config=lr_sweep or "
                    "--config=lr_sweep:smoke")
  config.arms = config_lib.arms_config(
      {name: {"target": {"learning_rate": rate}} for name, rate in RATES.items()})
  return config
