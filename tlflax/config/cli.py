"""Everything about `--config`: the shipped configs' names, loading a config file, the
`--config.KEY=VALUE` overrides, their one-line errors, and `--mode=config`'s listing. Used by
`tlflax.main` and `tlflax.tools.bench`.

`--config` is the name of a shipped config (`smoke`, `cifar10_to_cifar100`; `NAME:ARG` passes ARG
to its `get_config`) or the path of a config file (`FILE[:ARG]`). The file is loaded here, once;
an override of a key the config lacks is refused naming the closest keys; the others go to absl
through `config_flags.DEFINE_config_dict`, which parses and type-checks them.
"""

import difflib
import importlib.util
import os
import pathlib
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from tlflax import config as config_lib
from tlflax.errors import UserError

DEFAULT = "cifar10_to_cifar100"
_HELP = ("--help", "--helpshort", "--helpfull", "--helpxml", "-h", "-?")
CONFIG_HELP = ("A shipped config's name (smoke, cifar10_to_cifar100, cifar10_to_cifar100_arms, "
               "imagenet_to_cifar100; NAME:val holds out validation) or a config file's path; "
               "--config.KEY=VALUE overrides a key (--mode=config lists them).")


def configs_dir() -> pathlib.Path:
  """The folder of the configs shipped with tlflax: the installed `tlflax.configs` package, or
  `configs/` next to `tlflax/` in a checkout that was not installed."""
  try:
    spec = importlib.util.find_spec("tlflax.configs")
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  return pathlib.Path(__file__).resolve().parent.parent / "configs"


def named_configs() -> list[str]:
  """Names of the shipped configs (`--config=NAME`)."""
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def config_path(value: str) -> str:
  """`--config`'s value as FILE[:ARG]: a shipped config's NAME[:ARG] becomes its file's path, a
  path is used as given. A name that is neither says which names exist."""
  file, sep, arg = value.partition(":")
  if os.path.exists(file) or file.endswith(".py") or os.sep in file:
    return value
  path = configs_dir() / f"{file}.py"
  if not path.exists():
    names = named_configs()
    close = difflib.get_close_matches(file, names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UserError(f"no config named {file!r}{hint}: use one of {', '.join(names)}, or the "
                    "path of a config file")
  return f"{path}{sep}{arg}"


def config_value(argv: list[str], default: str = DEFAULT) -> str:
  """The value of `--config=V` (or `--config V`) in argv, else `default`."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


def load(value: str) -> ml_collections.ConfigDict:
  """The config `--config=value` names, before overrides; every way it can fail is one line."""
  file, _, arg = config_path(value).partition(":")
  if not os.path.isfile(file):
    raise UserError(f"cannot load config file {file} (no such file): pass an existing file or "
                    "a shipped config's name, e.g. --config=smoke")
  try:
    spec = importlib.util.spec_from_file_location("_tlflax_config", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    get_config = getattr(module, "get_config", None)
    if get_config is None:
      raise UserError(f"config file {file} defines no get_config(): pass a tlflax config file "
                      "or a shipped config's name, e.g. --config=smoke")
    config = get_config(arg) if arg else get_config()
  except UserError:
    raise
  except Exception as e:
    reason = f"{type(e).__name__}: {e}".splitlines()[0]
    raise UserError(f"cannot load config {file} ({reason}): fix the file, or pass a shipped "
                    "config's name, e.g. --config=smoke (NAME:ARG only where get_config takes "
                    "one)") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise UserError(f"get_config() of {file} returned {type(config).__name__}, not a ConfigDict")
  return config


def closest_keys(config, key: str, n: int = 3) -> list[str]:
  """The existing flat keys nearest to a misspelt `key` (by whole path, then by its last part)."""
  keys = list(config_lib.flat_keys(config))
  close = difflib.get_close_matches(key, keys, n=n, cutoff=0.75)
  if len(close) < n:
    last = key.rsplit(".", 1)[-1]
    for k in keys:
      tail = k.rsplit(".", 1)[-1]
      if k not in close and difflib.SequenceMatcher(None, last, tail).ratio() >= 0.75:
        close.append(k)
  return close[:n]


def check_overrides(config, argv: list[str]) -> None:
  """A `UserError` naming the first `--config.KEY=...` whose key the config lacks, with the
  closest keys it has."""
  keys = config_lib.flat_keys(config)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    if key in keys or any(k.startswith(key + ".") for k in keys):
      continue
    close = closest_keys(config, key)
    hint = f" (closest: {', '.join(close)})" if close else ""
    raise UserError(f"unknown config key {key} in --config.{key}=...{hint}: use a key the config "
                    "defines (--mode=config lists them)")


def parse(argv: list[str], default: str = DEFAULT, flag_values=flags.FLAGS) -> list[str]:
  """absl's flag parsing with the config loaded here: defines `--config` from the file
  `--config` names (or `default`), checks the override keys, parses everything. A mistake is a
  `UserError`; --help and friends print and exit 0 (absl exits 1)."""
  value = config_value(argv, default)
  config = load(value)
  check_overrides(config, argv)
  rest = [a for i, a in enumerate(argv) if not a.startswith("--config=") and a != "--config"
          and not (i > 0 and argv[i - 1] == "--config")]
  try:
    config_flags.DEFINE_config_dict("config", config, CONFIG_HELP, flag_values=flag_values,
                                    lock_config=True, sys_argv=rest)
    # --helpshort lists the flags of the module that sys.argv[0] names: --config is one of them.
    flag_values.register_key_flag_for_module(sys.argv[0], flag_values["config"])
    flag_values["config"].default_as_str = repr(value)  # its name, not the whole config
    return flag_values(rest)
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    raise UserError(f"{_first_line(e)} (see --helpshort)") from e


def parse_plain(argv: list[str], program: str) -> list[str]:
  """absl's parsing for a command without --config (`program` names it in errors): --help exits
  0 as in `parse`, a bad flag is one line and exit 2."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    if e.code == 1 and any(a.split("=")[0] in _HELP for a in argv[1:]):
      sys.exit(0)
    raise
  except flags.Error as e:
    print(f"{program}: error: {_first_line(e)} (see --helpshort)", file=sys.stderr)
    sys.exit(2)


def _first_line(e: BaseException) -> str:
  """An exception's first line; a KeyError's str() is the repr of its message."""
  text = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
  text = text.replace("\\n", "\n").replace("\\'", "'").strip()
  line = text.splitlines()[0].strip() if text else type(e).__name__
  return line.strip("\"'") if " " not in line else line


def describe(config) -> str:
  """Every key of `config` with its value and meaning, one a line (`--mode=config`)."""
  rows = [(key, "{}" if isinstance(value, ml_collections.ConfigDict) else repr(value))
          for key, value in config_lib.flat_keys(config).items()]
  width = max(len(k) for k, _ in rows)
  vwidth = min(max(len(v) for _, v in rows), 28)
  lines = []
  for key, value in rows:
    meaning = config_lib.key_help(key)
    lines.append(f"{key:<{width}}  {value:<{vwidth}}  {'# ' + meaning if meaning else ''}".rstrip())
  return "\n".join(lines)
