"""`spec.RunSpec`s for tests that call `train.fit` directly: the seed config with a test's own
phase, model and transfer blocks (imported by the tests and by multidevice_checks.py)."""

from tlflax import config as config_lib
from tlflax.train import spec as spec_lib


def run_spec(phase, model, *, transfer=None, seed: int = 0, checkpoint: dict | None = None,
             data=None, log_every_steps: int = 50, eval_every_epochs: int = 1
             ) -> spec_lib.RunSpec:
  """A scratch run of `phase` (a transfer run when `transfer` is given) with `model` (a dict or
  ConfigDict of model keys; the rest default)."""
  config = config_lib.base_config()
  config.model = config_lib.model_config(**dict(model))
  config.target = phase
  if transfer is not None:
    config.transfer = transfer
  config.checkpoint.update(checkpoint or {})
  if data is not None:
    config.data = data
  config.seed, config.log_every_steps = seed, log_every_steps
  config.eval_every_epochs = eval_every_epochs
  return spec_lib.RunSpec.create("transfer" if transfer is not None else "scratch", config)
