"""The seed experiment shrunk to run offline on a laptop's CPU in a minute or two.

A narrow ResNet-18 (width 8), the built-in synthetic10 -> synthetic100 datasets, a few epochs,
two seeds for `--mode=compare`; 512 held-out synthetic100 training images select the best epoch.
"""

from tlflax import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.model.width = 8
  small = {"batch_size": 64, "eval_batch_size": 500, "learning_rate": 0.05, "warmup_epochs": 0.5}
  config.source = config_lib.phase_config(
      "synthetic10", epochs=3, train_split="train[:2048]", test_split="test[:500]", **small)
  config.target = config_lib.phase_config(
      "synthetic100", epochs=3, train_split="train[:2048]", test_split="test[:1000]",
      val_split="train[2048:2560]", **small)
  config.seeds = (0, 1)
  config.log_every_steps = 8
  return config
