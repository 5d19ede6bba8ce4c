"""Weights from outside tlflax and back out: torchvision / timm ResNets in safetensors files, on
disk or on the Hugging Face hub (`hf://ORG/NAME`): which architecture a file holds, its identity
(sha256), its variables in tlflax's layout and its input statistics; and writing tlflax variables
as such a file. Turning a file, a run folder or a checkpoint into a model is
`tlflax.use.loader.load` (`tlflax.load`).

safetensors, not pickles: a `.pth` / `.pt` / `.bin` file is a pickle, and loading one runs
whatever code it holds, so tlflax refuses it and says how to convert it (two lines of PyTorch).
The hub is reached through `huggingface_hub` (`pip install tlflax[hub]`), which also works offline
from the user's cache. A weights file's input statistics travel with it: from its own metadata
(files tlflax exports), from a hub model's `config.json` (timm's `pretrained_cfg`), else
ImageNet's, which torchvision's and timm's ImageNet ResNets use.
"""

import dataclasses
import hashlib
import json
import os

from tlflax.errors import UserError
from tlflax.models import torch_layout

HUB_PREFIX = "hf://"
SUFFIX = ".safetensors"
PICKLES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def is_weights(path: str) -> bool:
  """Whether `path` names a weights file (safetensors, a pickle to refuse, or a hub model) rather
  than a tlflax run or checkpoint."""
  return path.startswith(HUB_PREFIX) or path.endswith(SUFFIX) or path.endswith(PICKLES)


@dataclasses.dataclass(frozen=True)
class Weights:
  """A weights file, read: its state dict (numpy, torchvision layout), what it is, its input
  statistics, the local file and its sha256 (its identity)."""

  state: dict
  arch: torch_layout.Architecture
  mean: tuple
  std: tuple
  file: str
  sha256: str
  metadata: dict


def local_file(path: str) -> str:
  """The local safetensors file `path` names: itself, or a hub model's `model.safetensors`
  (downloaded, or from the cache when offline). Pickles and missing files are `UserError`s."""
  if path.endswith(PICKLES):
    raise UserError(
        f"{path} is a pickle, and loading one runs whatever code it holds: convert it once with "
        "PyTorch, `import torch, safetensors.torch; safetensors.torch.save_file(torch.load("
        f"'{path}', map_location='cpu', weights_only=True), 'model.safetensors')`, and point "
        "init_from at model.safetensors")
  if path.startswith(HUB_PREFIX):
    return _hub_file(path[len(HUB_PREFIX):])
  file = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(file):
    raise UserError(f"weights file {path} does not exist: pass an existing .safetensors file or "
                    "hf://ORG/NAME")
  return file


def _hub_file(repo: str) -> str:
  repo, _, revision = repo.partition("@")
  try:
    import huggingface_hub  # the optional extra tlflax[hub]
  except ImportError as e:
    raise UserError(f"hf://{repo} needs huggingface_hub: pip install 'tlflax[hub]'") from e
  try:
    return huggingface_hub.hf_hub_download(repo, "model.safetensors", revision=revision or None)
  except Exception as e:  # offline and not cached, unknown repo, no safetensors file
    reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise UserError(f"cannot get model.safetensors of hf://{repo} ({type(e).__name__}: {reason}):"
                    f" on a machine with network, `huggingface-cli download {repo} "
                    "model.safetensors` fills the cache (then HF_HUB_OFFLINE=1 works), or pass "
                    "the file's path") from e


def sha256(file: str) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _open(file: str, source: str):
  try:
    from safetensors import safe_open  # the optional extra tlflax[weights]
  except ImportError as e:
    raise UserError(f"{source} needs safetensors: pip install 'tlflax[weights]'") from e
  try:
    return safe_open(file, "numpy")
  except Exception as e:  # truncated, or not a safetensors file
    raise UserError(f"cannot read {source} as safetensors ({type(e).__name__}: "
                    f"{str(e).strip()[:160]}): the file is damaged or of another format") from e


def inspect(path: str) -> tuple[torch_layout.Architecture, str, str]:
  """(architecture, local file, sha256) of a weights file, from its header and bytes, without
  loading its arrays."""
  file = local_file(path)
  with _open(file, path) as f:
    shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
  return torch_layout.architecture(shapes, path), file, sha256(file)


def read(path: str) -> Weights:
  """The weights `path` names (a safetensors file or hf://ORG/NAME), read."""
  file = local_file(path)
  with _open(file, path) as f:
    metadata = dict(f.metadata() or {})
    try:
      state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
    except Exception as e:  # the header is fine, the data is cut short
      raise UserError(f"cannot read the arrays of {path} ({type(e).__name__}): the file is "
                      "damaged; download or export it again") from e
  arch = torch_layout.architecture({k: v.shape for k, v in state.items()}, path)
  mean, std = _statistics(metadata, file)
  return Weights(state, arch, mean, std, file, sha256(file), metadata)


def statistics(path: str) -> tuple[tuple, tuple]:
  """The input mean and std of the weights `path` names (see `_statistics`)."""
  file = local_file(path)
  with _open(file, path) as f:
    metadata = dict(f.metadata() or {})
  return _statistics(metadata, file)


def _statistics(metadata: dict, file: str) -> tuple[tuple, tuple]:
  """The input mean and std: the file's metadata, a hub model's config.json beside it, else
  ImageNet's."""
  if "mean" in metadata and "std" in metadata:
    return tuple(json.loads(metadata["mean"])), tuple(json.loads(metadata["std"]))
  config = os.path.join(os.path.dirname(file), "config.json")
  if os.path.exists(config):
    with open(config) as f:
      cfg = json.load(f).get("pretrained_cfg", {})
    if "mean" in cfg and "std" in cfg:
      return tuple(cfg["mean"]), tuple(cfg["std"])
  return IMAGENET_MEAN, IMAGENET_STD


def variables(weights: Weights) -> dict:
  """tlflax variables (numpy float32) of read weights."""
  return torch_layout.to_variables(weights.state, weights.file)


def check_model(arch: torch_layout.Architecture, model_cfg, source: str) -> None:
  """A `UserError` when the configured model is not the one the weights hold."""
  if (arch.name, arch.width) != (model_cfg.name, model_cfg.width):
    raise UserError(f"{source} holds {arch.name} of width {arch.width}, but the config trains "
                    f"{model_cfg.name} of width {model_cfg.width}: set --config.model.name="
                    f"{arch.name} --config.model.width={arch.width}")


def save(variables_: dict, file: str, metadata: dict) -> None:
  """Writes tlflax variables as a torchvision-layout safetensors file with `metadata` (strings
  or JSON-able values)."""
  from safetensors.numpy import save_file  # tlflax[weights], as in _open
  text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
  save_file(torch_layout.to_state_dict(variables_), file, metadata={"format": "pt", **text})
