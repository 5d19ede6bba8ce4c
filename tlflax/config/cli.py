"""Everything about `--config` on a command line: its help, the `--config.KEY=VALUE` overrides,
their one-line errors, and `--mode=config`'s listing. Used by `tlflax.main` and
`tlflax.tools.bench`.

`--config` is the name of a shipped config (`smoke`, `cifar10_to_cifar100:val`; `NAME:ARG` passes
ARG to its `get_config`) or the path of a config file (`FILE[:ARG]`). `files.load` loads it, once;
an override of a key the config lacks is refused naming the closest keys; the others go to absl
through `config_flags.DEFINE_config_dict`, which parses and type-checks them.
"""

import difflib
import sys

import ml_collections
from absl import flags
from ml_collections import config_flags

from tlflax import config as config_lib
from tlflax.config import files
from tlflax.config.files import load
from tlflax.errors import UserError

DEFAULT = "cifar10_to_cifar100"
_HELP = ("--help", "--helpshort", "--helpfull", "--helpxml", "-h", "-?")


def config_help() -> str:
  """--config's help: the shipped configs as the folder holds them, each with its argument."""
  names = ", ".join(files.usage(name) for name in files.named_configs())
  return (f"A shipped config's name ({names}; docs/config.md says what each is and takes) or "
          "the path of a config file (FILE[:ARG]); --config.KEY=VALUE overrides a key "
          "(--mode=config lists them).")


def config_value(argv: list[str], default: str = DEFAULT) -> str:
  """The value of `--config=V` (or `--config V`) in argv, else `default`."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return default


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
    config_flags.DEFINE_config_dict("config", config, config_help(), flag_values=flag_values,
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
