"""The study with its two questions: how much of the network to retrain, and how much transfer
helps when labels are scarce.

The seed experiment (configs/cifar10_to_cifar100.py) with four transfer arms, all from one
CIFAR-10 pretraining:
  full     every layer trains from the source's weights (the study's choice)
  stages2  the stem and the first two stages stay fixed, the rest trains
  probe    only the new head trains (a linear probe on the frozen backbone, cached features)
  gradual  the head first, stages 3-4 join at epoch 2, everything from epoch 4
at four label budgets (5, 25 and 100 CIFAR-100 training images per class, and all 500), three
seeds each: 1 pretraining + 5 experiments x 4 budgets x 3 seeds = 61 runs. Small budgets train
at least `target.min_steps` steps (docs/study.md, "Schedules at small budgets").
`:val` holds out 10% of each training split for model selection, as in the seed config.
"""

from tlflax import config as config_lib

ARGS = {"val": "hold out the last 10% of each training split to select the best epoch on"}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  config.arms = config_lib.arms_config({
      "full": {},
      "stages2": {"freeze": "stages:2"},
      "probe": {"freeze": "backbone"},
      "gradual": {"freeze": "backbone", "unfreeze": ((2, "stages:2"), (4, "none"))},
  })
  config.label_budgets = (5, 25, 100, 0)
  config.seeds = (0, 1, 2)
  return config_lib.holdout(config, arg)
