"""A whole config checked before anything runs: its values (`tlflax.config.validate`), then what
only the layers below the run know: the model builds, every freeze policy and BatchNorm mode
parses for the model's stages, the probe mode exists, tracking can start; and `arm_rules`, the
transfer rules of every arm against the model's real parameter paths."""

from tlflax import config as config_lib
from tlflax.errors import within
from tlflax.models import resnet
from tlflax.train import probe, tracking, transfer


def validate(config) -> None:
  """Raises a one-line `UserError` for the first value no run could use."""
  resnet.from_config(config.model, 2)
  config_lib.validate(config)
  stages = resnet.num_stages(config.model.name)
  _check_transfer(config.transfer, stages)
  for arm in config_lib.arm_names(config):
    with within(f"config.arms.{arm}"):
      _check_transfer(config_lib.with_arm(config, arm).transfer, stages)
  tracking.check(config.track)


def _check_transfer(t, stages: int) -> None:
  """What a transfer block's policies mean for a model of `stages` stages."""
  probe.check_mode(t.cache_features)
  if isinstance(t.freeze, str):
    transfer.freeze_patterns(t.freeze, stages)
  transfer.check_frozen_bn(t.frozen_bn)
  transfer.check_layer_decay(t.layer_decay)
  for _, policy in t.unfreeze:
    if isinstance(policy, str):
      transfer.freeze_patterns(policy, stages)


def arm_rules(config, arms: bool = True) -> None:
  """The transfer rules of every arm (`arms=False`: of `config.transfer` alone) against the
  model's parameter paths, before anything trains."""
  shapes = resnet.variable_shapes(config.model, 2, (config.target.image_size,) * 2 + (3,))
  blocks = ({f"config.arms.{arm}": config_lib.with_arm(config, arm).transfer
             for arm in config_lib.arm_names(config)} if arms else {None: config.transfer})
  for where, block in blocks.items():
    with within(where):
      transfer.check_rules(block, shapes["params"], resnet.num_stages(config.model.name))


