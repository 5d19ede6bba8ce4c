"""The seed experiment: ResNet-18 trained on CIFAR-10 (source), CIFAR-100 (target).

SGD with nesterov momentum 0.9, weight decay 5e-4, batch 128, cosine schedule with 1 epoch of
warm-up, pad-4 random crop + horizontal flip. CIFAR must be prepared in `data_dir` or downloadable.

As the study did, every run trains on all 50,000 training images, so the report's "best" figures
are selected on the test set (it says so). `--config=cifar10_to_cifar100:val` holds
out the last 10% of each training split instead (45,000 train / 5,000 validation images) and
selects on validation.
"""

from tlflax import config as config_lib

ARGS = {"val": "hold out the last 10% of each training split to select the best epoch on"}


def get_config(arg: str | None = None):
  config = config_lib.base_config()
  return config_lib.holdout(config, arg)
