"""Config files: the configs shipped in `configs/` (their names, the argument each takes, the line
that says what it is), and loading any config file once, every failure a one-line `UserError`.

A shipped config is a Python file whose `get_config(arg=None)` returns a ConfigDict; the
arguments it takes, and what each means, are its module's `ARGS` dict (none when it has no
`ARGS`). The list in `--helpshort`, `--mode=config` and docs/config.md is read from the files,
so it cannot fall behind the folder.
"""

import ast
import difflib
import importlib.util
import os
import pathlib

import ml_collections

from tlflax.errors import UserError


def configs_dir() -> pathlib.Path:
  """The folder of the configs shipped with tlflax: the installed `tlflax.configs` package, or
  `configs/` next to `tlflax/` in a checkout that was not installed."""
  try:
    spec = importlib.util.find_spec("tlflax.configs")
  except ImportError:
    spec = None
  if spec is not None and spec.submodule_search_locations:
    return pathlib.Path(next(iter(spec.submodule_search_locations)))
  return pathlib.Path(__file__).resolve().parent.parent.parent / "configs"


def named_configs() -> list[str]:
  """Names of the shipped configs (`--config=NAME`)."""
  return sorted(p.stem for p in configs_dir().glob("*.py") if not p.stem.startswith("_"))


def shipped_args(name: str) -> dict[str, str]:
  """{argument: meaning} of a shipped config's `ARGS`, read from its file without running it."""
  tree = ast.parse((configs_dir() / f"{name}.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "ARGS" for t in node.targets):
      return ast.literal_eval(node.value)
  return {}


def summary(name: str) -> str:
  """The first sentence of a shipped config's docstring, on one line."""
  doc = ast.get_docstring(ast.parse((configs_dir() / f"{name}.py").read_text())) or ""
  paragraph = " ".join(doc.strip().split("\n\n")[0].split())
  return paragraph.split(". ")[0].rstrip(".") + "." if paragraph else ""


def usage(name: str) -> str:
  """How a shipped config is named on the command line: `smoke`, `cifar10_to_cifar100[:val]`,
  `lr_sweep[:smoke]`."""
  args = shipped_args(name)
  return name + (f"[:{'|'.join(args)}]" if args else "")


def config_path(value: str) -> str:
  """`--config`'s value as FILE[:ARG]: a shipped config's NAME[:ARG] becomes its file's path, a
  path is used as given. A name that is neither, or an argument the config does not take, says
  what exists."""
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
  args = shipped_args(file)
  if sep and arg not in args:
    if not args:
      raise UserError(f"config {file} takes no argument (got :{arg}): use --config={file}")
    raise UserError(f"config {file} takes no argument {arg!r}: use --config={file} or "
                    f"{', '.join(f'--config={file}:{a}' for a in args)}")
  return f"{path}{sep}{arg}"


def load(value: str) -> ml_collections.ConfigDict:
  """The config `--config=value` names (a shipped NAME[:ARG] or FILE[:ARG]), before overrides;
  every way it can fail is one line."""
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


def shipped(value: str) -> ml_collections.ConfigDict:
  """A shipped config by name, for config files that start from one:
  `config_lib.shipped("smoke")` (in a checkout and in an install alike)."""
  return load(value)
