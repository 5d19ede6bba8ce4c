"""Weights from outside tlflax and back out: torchvision / timm ResNets in safetensors files, on
disk or on the Hugging Face hub (`hf://ORG/NAME`): which architecture a file holds, its identity
(sha256), its variables in tlflax's layout and its input statistics; and writing tlflax variables
as such a file. Turning a file, a run folder or a checkpoint into a model is
`tlflax.use.loader.load` (`tlflax.load`).

safetensors, not pickles: a `.pth` / `.pt` / `.bin` file is a pickle, and loading one runs
whatever code it holds, so tlflax refuses it and says how to convert it (two lines of PyTorch).
The hub is reached through `huggingface_hub` (the `hub` extra), which also works offline
from the user's cache. A weights file's input statistics travel with it: from its own metadata
(files tlflax exports), from a hub model's `config.json` (timm's `pretrained_cfg`), else
ImageNet's, which torchvision's and timm's ImageNet ResNets use.
"""

import dataclasses
import hashlib
import json
import os

import safetensors.numpy
from safetensors import safe_open

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


def local_file(path: str, what: str = "config.transfer.init_from") -> str:
  """The local safetensors file `path` names: itself, or a hub model's `model.safetensors`
  (downloaded, or from the cache when offline). Pickles and missing files are `UserError`s that
  name `what`, the flag or key `path` came from."""
  if path.endswith(PICKLES):
    raise UserError(
        f"{path} is a pickle, and loading one runs whatever code it holds: convert it once with "
        "PyTorch, `import torch, safetensors.torch; safetensors.torch.save_file(torch.load("
        f"'{path}', map_location='cpu', weights_only=True), 'model.safetensors')`, and point "
        f"{what} at model.safetensors")
  if path.startswith(HUB_PREFIX):
    return _hub_file(path[len(HUB_PREFIX):])
  file = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(file):
    raise UserError(f"weights file {path} does not exist: point {what} at an existing "
                    ".safetensors file or hf://ORG/NAME")
  return file


def _hub_file(spec: str) -> str:
  """The local `model.safetensors` of hf://ORG/NAME[@REVISION], with the repo's `config.json`
  (its preprocessing) fetched beside it from the same revision."""
  try:
    import huggingface_hub  # the optional extra tlflax[hub]
  except ImportError as e:
    raise UserError(f"hf://{spec} needs huggingface_hub: install the hub extra, pip install -e "
                    "'.[hub]' in the tlflax checkout") from e
  file = _hub_download(huggingface_hub, spec, "model.safetensors")
  try:
    _hub_download(huggingface_hub, spec, "config.json")
  except _NoSuchFile:
    pass  # a repo without config.json: the file's own metadata, else ImageNet's statistics
  return file


class _NoSuchFile(Exception):
  pass


def _hub_download(huggingface_hub, spec: str, name: str) -> str:
  repo, _, revision = spec.partition("@")
  try:
    return huggingface_hub.hf_hub_download(repo, name, revision=revision or None)
  except huggingface_hub.utils.EntryNotFoundError as e:  # the repo answered: no such file
    # (huggingface_hub.utils, not .errors: the tlflax[hub] floor, 0.20, has no errors module)
    if name == "config.json" and not isinstance(e, huggingface_hub.utils.LocalEntryNotFoundError):
      raise _NoSuchFile(name) from e
    error = e
  except Exception as e:  # noqa: BLE001 -- offline and not cached, unknown repo or revision
    error = e
  first = str(error).strip().split("\n")[0].split(". ")[0].rstrip(".") or "no details"
  rev = f" --revision {revision}" if revision else ""
  raise UserError(f"cannot get {name} of hf://{spec} ({type(error).__name__}: {first}). On a "
                  f"machine with network, `hf download {repo} model.safetensors config.json{rev}` "
                  "fills the cache, after which HF_HUB_OFFLINE=1 works; or pass the file's "
                  "path") from error


def sha256(file: str) -> str:
  digest = hashlib.sha256()
  with open(file, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _open(file: str, source: str):
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
    _check_dtypes({k: f.get_slice(k).get_dtype() for k in shapes}, path)
  arch = torch_layout.architecture(shapes, path)
  check_config(arch, file, path)
  return arch, file, sha256(file)


def read(path: str, what: str = "config.transfer.init_from") -> Weights:
  """The weights `path` names (a safetensors file or hf://ORG/NAME), read (`what`: the flag or
  key the user named it with, for errors)."""
  file = local_file(path, what)
  with _open(file, path) as f:
    metadata = dict(f.metadata() or {})
    try:
      state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - a safe_open handle, not a dict
    except Exception as e:  # the header is fine, the data is cut short
      raise UserError(f"cannot read the arrays of {path} ({type(e).__name__}): the file is "
                      "damaged; download or export it again") from e
  _check_dtypes({k: str(v.dtype) for k, v in state.items()}, path)
  arch = torch_layout.architecture({k: v.shape for k, v in state.items()}, path)
  check_config(arch, file, path)
  mean, std = _statistics(metadata, file)
  return Weights(state, arch, mean, std, file, sha256(file), metadata)


_FLOATS = ("F16", "BF16", "F32", "F64", "float16", "bfloat16", "float32", "float64")


def _check_dtypes(dtypes: dict[str, str], source: str) -> None:
  """A `UserError` naming the first array (other than a BatchNorm's step count) that does not
  hold floating-point values: safetensors' header names ('F32', 'I32') or numpy's ('int32')."""
  for key, dtype in dtypes.items():
    if not key.endswith("num_batches_tracked") and dtype not in _FLOATS:
      name = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64", "U8": "uint8",
              "BOOL": "bool"}.get(dtype, dtype)
      raise UserError(f"{source}: {key} holds {name} values, not floating point: these are not "
                      "trained weights (export the model's state_dict() again)")


def statistics(path: str) -> tuple[tuple, tuple]:
  """The input mean and std of the weights `path` names (see `_statistics`)."""
  file = local_file(path)
  with _open(file, path) as f:
    metadata = dict(f.metadata() or {})
  return _statistics(metadata, file)


def _statistics(metadata: dict, file: str) -> tuple[tuple, tuple]:
  """The input mean and std: the file's metadata, a hub model's config.json beside it (timm's
  `pretrained_cfg`), else ImageNet's."""
  if "mean" in metadata and "std" in metadata:
    return tuple(json.loads(metadata["mean"])), tuple(json.loads(metadata["std"]))
  cfg = pretrained_cfg(file)
  if "mean" in cfg and "std" in cfg:
    return tuple(cfg["mean"]), tuple(cfg["std"])
  return IMAGENET_MEAN, IMAGENET_STD


def hub_config(file: str) -> dict:
  """The config.json beside a weights file (a hub snapshot's), {} when there is none; a file
  that is not a JSON object is a `UserError`."""
  path = os.path.join(os.path.dirname(file), "config.json")
  if not os.path.exists(path):
    return {}
  try:
    with open(path) as f:
      config = json.load(f)
  except ValueError as e:
    config = f"invalid JSON, {str(e).splitlines()[0]}"
  if not isinstance(config, dict):
    reason = config if isinstance(config, str) else "not a JSON object"
    raise UserError(f"{path} is not a valid config.json ({reason}): download it again, or remove "
                    "it to use the weights' own metadata")
  return config


def pretrained_cfg(file: str) -> dict:
  """timm's `pretrained_cfg` of the config.json beside `file` (the top level's keys for a
  config without one)."""
  config = hub_config(file)
  return config.get("pretrained_cfg") or config


def check_config(arch: torch_layout.Architecture, file: str, source: str) -> None:
  """A `UserError` when the config.json beside the weights contradicts them: another
  architecture or class count, a mean or std that is not three numbers, a non-square input."""
  config = hub_config(file)
  if not config:
    return
  cfg = pretrained_cfg(file)
  name = str(config.get("architecture", "")).split(".")[0]
  if name and f"{name}_imagenet" != arch.name and name != arch.name:
    raise UserError(f"{source}: its config.json says {name!r}, its weights are {arch.name}: "
                    "the repo's files disagree; use a repo whose weights match its config")
  classes = cfg.get("num_classes", config.get("num_classes"))
  if classes is not None and int(classes) != arch.num_classes:
    raise UserError(f"{source}: its config.json says {classes} classes, its head has "
                    f"{arch.num_classes}: use a repo whose weights match its config")
  for key in ("mean", "std"):
    value = cfg.get(key)
    if value is not None and (not isinstance(value, list) or len(value) != 3
                              or not all(isinstance(v, (int, float)) for v in value)):
      raise UserError(f"{source}: its config.json's {key} is {value!r}, not three numbers")
  size = cfg.get("input_size")
  if size is not None and (len(size) != 3 or size[1] != size[2]):
    raise UserError(f"{source}: its config.json's input_size {size} is not (3, S, S): tlflax "
                    "feeds square images")


def image_size(arch: torch_layout.Architecture, metadata: dict, file: str) -> int:
  """The input side the weights expect: their metadata (tlflax's export), the hub config's
  input_size, else 224 for ImageNet models and 32 for CIFAR ones."""
  if "image_size" in metadata:
    return int(metadata["image_size"])
  size = pretrained_cfg(file).get("input_size")
  if size:
    return int(size[-1])
  return 224 if arch.name.endswith("_imagenet") else 32


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
  text = {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}
  safetensors.numpy.save_file(torch_layout.to_state_dict(variables_), file,
                              metadata={"format": "pt", **text})
