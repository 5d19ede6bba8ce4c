"""A transfer run's source: which one it is (`resolve`: `DIR/pretrain`, another run or checkpoint,
a safetensors file or hf://ORG/NAME, with the identity that decides a run's weights), the
target's initial variables merged from it, and the input statistics it was trained with. The
pretraining itself is made ready by `phase.prepare_source`."""

import dataclasses
import os
from typing import Any

import numpy as np

from tlflax.errors import UserError
from tlflax.io import checkpoint, rundir, storage
from tlflax.models import resnet, weights
from tlflax.train import transfer


@dataclasses.dataclass(frozen=True)
class Source:
  """Where a transfer run starts, known before any of it trains: the source run folder (or the
  weights file, or hf://ORG/NAME) and its identity: the hash of the config that decides a run's
  weights (None for a checkpoint from elsewhere), or a weights file's sha256. For `DIR/pretrain`,
  which tlflax trains (or reuses) itself, `pretrain` is the config it trains with (today's
  `seed`, `model` and `source` block); None for a source named by `init_from`. `weights`: the
  local safetensors file of a weights source."""

  run: str
  config_sha256: str | None
  pretrain: Any = dataclasses.field(default=None, compare=False)
  weights: str | None = None
  sha256: str | None = None

  def record(self) -> dict:
    """What a transfer run's config.json says of its source (`init`) before it trains; the
    checkpoint and step it then starts from are added (`record_init`)."""
    out = {"run": self.run, "config_sha256": self.config_sha256}
    return {**out, "sha256": self.sha256} if self.weights else out


def resolve(config, workdir: str) -> Source:
  """The `Source` of a transfer run of `config` in `workdir`.

  With `transfer.init_from` empty the source is `DIR/pretrain`, trained (or reused) with today's
  `source` block, so the hash comes from today's config. A weights file (or hf://ORG/NAME) is
  identified by its sha256 and must hold the configured model. Otherwise the hash is read from
  the source run's config.json; a run folder named there must be finished, a mid-training
  checkpoint must be named by its step folder.
  """
  if not config.transfer.init_from:
    run = storage.absolute(storage.join(workdir, "pretrain"))
    pretrain = config.copy_and_resolve_references()
    record = rundir.record_of("pretrain", pretrain)
    return Source(run, rundir.config_hash(record, "pretrain"), pretrain)
  if weights.is_weights(config.transfer.init_from):  # torchvision / timm weights
    where = f"config.transfer.init_from={config.transfer.init_from}"
    arch, file, digest = weights.inspect(config.transfer.init_from)
    weights.check_model(arch, config.model, where)
    name = config.transfer.init_from
    run = name if name.startswith(weights.HUB_PREFIX) else file
    return Source(run, None, weights=file, sha256=digest)
  path = storage.absolute(config.transfer.init_from)
  directory, step = checkpoint.locate(path)
  run = os.path.dirname(directory) if os.path.basename(directory) == "checkpoints" else directory
  named_step = os.path.basename(path).isdigit()
  if not named_step and rundir.finished(run) is None:
    raise UserError(f"config.transfer.init_from={config.transfer.init_from} is a run that has not "
                    f"finished: finish it first, or name one of its checkpoints explicitly, e.g. "
                    f"--config.transfer.init_from={directory}/{step}")
  record = rundir.read_json(storage.join(run, "config.json"))
  digest = None
  if record is not None and record.get("mode") in rundir.RELEVANT:
    digest = rundir.config_hash(record, record["mode"])
  return Source(run, digest)


def variables(config, source, target_task, placement) -> tuple[dict, dict]:
  """The target's initial variables (the source's merged into a fresh init, on the devices of
  `placement`) and the source's `init` record completed with what they came from: the
  checkpoint and its step, or the weights file."""
  init = source.record()
  if source.weights:
    restored = placement.replicate(weights.variables(weights.read(source.weights)))
    name, init = source.run, {**init, "checkpoint": source.weights}
  else:
    restored, name = checkpoint.restore_variables(config.transfer.init_from or source.run,
                                                  placement.replicated)
    init = {**init, "checkpoint": name, "step": int(name.rsplit("/", 1)[1])}
  fresh = placement.replicate(resnet.init_variables(
      config.model, target_task.num_classes, target_task.train.images.shape[1:], config.seed))
  return transfer.merge_pretrained(fresh, restored, config.transfer.reinit, name), init


def statistics(init: dict) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std) the source normalised its inputs with: a source run's data_stats.json (or
  summary.json), or what a weights file carries (`weights.statistics`)."""
  if init.get("sha256"):
    mean, std = weights.statistics(init["run"])
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)
  source_run = init["run"]
  for name in (rundir.STATS_FILE, "summary.json"):
    record = rundir.read_json(os.path.join(source_run, name)) or {}
    if "mean" in record and "std" in record:
      return np.asarray(record["mean"], np.float32), np.asarray(record["std"], np.float32)
  raise UserError(f"{source_run} records no input statistics ({rundir.STATS_FILE}) to normalise the "
                  "transfer run with: set --config.transfer.normalize=target")
