"""The package's layers, written once, and the rules that keep them: imports point down, siblings
do not import each other, an import inside a function says why, no module reaches into another's
private names, and modules and classes stay small enough to read."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = pathlib.Path(REPO) / "tlflax"

# From the bottom up; names on one line are siblings, which may not import each other.
LAYERS = [
  ("errors",),
  ("parallel",),
  ("config",),
  ("io",),
  ("data",),
  ("models",),
  ("train",),
  ("study", "use"),
  ("tools",),
  ("main", "__init__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}

# What an import inside a function may bring: optional extras and deliberately lazy heavy
# packages (each with its reason in a comment), and, from the package's __init__ alone, the use
# layer behind tlflax.load / tlflax.predict.
LAZY = ("torch", "huggingface_hub", "wandb", "PIL", "tensorflow",
        "tensorflow_datasets", "matplotlib", "jax.experimental.jax2tf", "orbax.checkpoint",
        "etils", "scipy")
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 150


def _modules() -> dict[str, pathlib.Path]:
  """{'tlflax.train.steps': path} of every module of the package (a package is its __init__)."""
  out = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return out


def _unit(module: str) -> str:
  """The layer unit a module belongs to: its sub-package, or the top-level module's name."""
  parts = module.split(".")
  if len(parts) == 1:
    return "__init__"
  return parts[1]


def _imports(path: pathlib.Path) -> list[tuple[str, int, bool]]:
  """(imported module, line, inside a function) of every import in a file, `from X import y`
  giving X.y when that is a module of the package."""
  tree = ast.parse(path.read_text())
  top = set(map(id, tree.body))
  modules = _modules()
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      out += [(a.name, node.lineno, id(node) not in top) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        own = node.module.startswith("tlflax") and full not in modules
        out.append((node.module if own else full, node.lineno, id(node) not in top))
  return out


def test_every_module_belongs_to_a_layer():
  units = {_unit(m) for m in _modules()}
  assert units - set(RANK) == set(), "add the new sub-package to LAYERS"
  for sub in PACKAGE.iterdir():
    if sub.is_dir() and (sub / "__init__.py").exists():
      doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_text())) or ""
      assert "May import" in doc, f"tlflax/{sub.name}/__init__.py must say what it may import"


def test_imports_point_down_and_siblings_stay_apart():
  wrong = []
  for module, path in _modules().items():
    unit = _unit(module)
    for name, line, _ in _imports(path):
      if not name.startswith("tlflax.") or name.startswith("tlflax.configs"):
        continue
      target = _unit(name)
      if target == unit:
        continue
      if RANK[target] >= RANK[unit]:
        wrong.append(f"{module}:{line} imports {name} ({target} is not below {unit})")
  assert wrong == []


def test_shipped_configs_import_only_the_config_layer_and_errors():
  for path in sorted((pathlib.Path(REPO) / "configs").glob("*.py")):
    for name, line, _ in _imports(path):
      if name.startswith("tlflax"):
        assert name.startswith(("tlflax.config", "tlflax.errors")), f"{path.name}:{line}: {name}"


def test_imports_inside_functions_are_lazy_on_purpose_and_say_why():
  found = []
  for module, path in _modules().items():
    lines = path.read_text().splitlines()
    for name, line, inner in _imports(path):
      if not inner:
        continue
      allowed = name.startswith(LAZY) or (module == "tlflax" and name.startswith("tlflax.use"))
      # the reason: a comment on the import's line or on a line of the function above it
      start = line - 1
      while start > 0 and not lines[start - 1].lstrip().startswith("def "):
        start -= 1
      reason = any("#" in text for text in lines[start:line])
      if not (allowed and reason):
        found.append(f"{module}:{line} imports {name} inside a function"
                     + ("" if allowed else " (move it to the top)")
                     + ("" if reason else " without a comment saying why"))
  assert found == []


def test_no_module_uses_another_modules_private_names():
  modules = _modules()
  found = []
  for module, path in modules.items():
    tree = ast.parse(path.read_text())
    bound = {}  # local name -> tlflax module
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlflax"):
        for a in node.names:
          full = f"{node.module}.{a.name}"
          if full in modules:
            bound[a.asname or a.name] = full
          elif a.name.startswith("_"):
            found.append(f"{module}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in bound and node.attr.startswith("_")):
        found.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
  assert found == []


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_and_classes_stay_small(module):
  path = _modules()[module]
  text = path.read_text()
  assert len(text.splitlines()) <= MAX_MODULE_LINES, f"{module}: split it by job"
  for node in ast.walk(ast.parse(text)):
    if isinstance(node, ast.ClassDef):
      size = node.end_lineno - node.lineno + 1
      assert size <= MAX_CLASS_LINES, f"{module}.{node.name} has {size} lines"


def test_the_rules_catch_what_they_forbid(tmp_path, monkeypatch):
  """The checks above fail on a planted upward import, a reason-less lazy import and a private
  name (so a green run means something)."""
  fake = tmp_path / "tlflax"
  (fake / "io").mkdir(parents=True)
  (fake / "train").mkdir()
  (fake / "__init__.py").write_text("")
  (fake / "io" / "__init__.py").write_text('"""May import: nothing."""\n')
  (fake / "train" / "__init__.py").write_text('"""May import: io."""\n')
  (fake / "train" / "steps.py").write_text("def _hidden():\n  pass\n")
  (fake / "io" / "rundir.py").write_text(
      "from tlflax.train import steps\n\n\ndef f():\n  import matplotlib\n  steps._hidden()\n")
  monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
  with pytest.raises(AssertionError, match="not below"):
    test_imports_point_down_and_siblings_stay_apart()
  with pytest.raises(AssertionError, match="without a comment"):
    test_imports_inside_functions_are_lazy_on_purpose_and_say_why()
  with pytest.raises(AssertionError, match="_hidden"):
    test_no_module_uses_another_modules_private_names()


def test_design_md_draws_todays_module_map():
  from tlflax.tools import module_map
  assert module_map.current(str(pathlib.Path(REPO) / "docs" / "design.md")) == \
      module_map.markdown(), "run python -m tlflax.tools.module_map --write docs/design.md"


def _documented_python_m() -> list[str]:
  """Every `python -m tlflax...` module that README.md and docs/*.md tell a user to run."""
  found = set()
  for doc in [pathlib.Path(REPO) / "README.md", *sorted((pathlib.Path(REPO) / "docs").glob("*.md"))]:
    found |= set(re.findall(r"python -m (tlflax[\w.]*)", doc.read_text()))
  return sorted(found)


def test_the_docs_name_the_commands_that_exist():
  assert {"tlflax.main", "tlflax.config", "tlflax.tools.bench", "tlflax.use.convert"} <= \
      set(_documented_python_m())


@pytest.mark.parametrize("module", _documented_python_m())
def test_every_documented_python_m_command_answers_help(module):
  out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                       text=True, timeout=300, check=False)
  assert out.returncode == 0, out.stderr[-1500:]
  assert "Traceback" not in out.stderr and len(out.stdout + out.stderr) > 40
