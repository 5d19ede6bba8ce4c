"""The seed experiment: ResNet-18 trained on CIFAR-10 (source), CIFAR-100 (target).

SGD with nesterov momentum 0.9, weight decay 5e-4, batch 128, cosine schedule with 1 epoch of
warm-up, pad-4 random crop + horizontal flip. CIFAR must be prepared in `data_dir` or downloadable.
"""

from tlflax import config as config_lib


def get_config():
  return config_lib.base_config()
