"""The docs cannot go stale: every fenced command of README.md and docs/*.md marked runnable runs
as written, and every name they cite (config keys, modes, shipped configs, modules and their
attributes, files, links and their anchors) exists in the code.

A fenced `bash` or `python` block is preceded by an HTML comment that says what it is:
`<!-- runnable -->` (run here), or `<!-- needs ... -->` / `<!-- measured ... -->` saying why a
test does not run it (a download, an accelerator, a second machine, a measurement). Runnable
blocks run in file order (README.md first, then docs/ by name), in one scratch folder that stands
in for /tmp, so a later block may use what an earlier one wrote, as a reader would; a block
identical to one already run is not run twice. What a test changes, and nothing else:
- `/tmp/` becomes the scratch folder, `./launch.sh` this checkout's launcher, `.venv/` the
  environment the tests run in (`TLFLAX_VENV`, so launch.sh runs that one's python);
- a command that trains (`--mode=pretrain|scratch|transfer|compare` with a `--config`) gets
  `TINY` appended: one epoch per phase of fewer images, and one seed, so the suite stays fast;
  so does `--mode=rank`, whose target split must match the runs it is checked against;
- a python line `print(...)  # TEXT` must print TEXT.
"""

import ast
import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

from conftest import JAX_CACHE, REPO

from tlflax import config as config_lib
from tlflax import main as main_lib
from tlflax.config import files

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED = {REPO / "docs" / "config.md", REPO / "docs" / "design.md"}
FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>\w*)\n(?P<body>.*?)^(?P=indent)```",
                   re.DOTALL | re.MULTILINE)
# rank trains nothing but reads the target split, which must match the runs it is checked against.
TRAINING = re.compile(r"--mode=(pretrain|scratch|transfer|compare|rank)\b")
# key: what is appended (the smoke configs' data, cut to a few steps of one epoch).
TINY = {"source.epochs": "--config.source.epochs=1", "target.epochs": "--config.target.epochs=1",
        "source.train_split": "--config.source.train_split=train[:512]",
        "target.train_split": "--config.target.train_split=train[:1024]"}
NOT_KEYS = {"model.apply", "model.init"}  # Flax's methods of a `model`, which docs cite too
BLOCKS = ("pretrain", "source", "target", "data", "model", "transfer", "checkpoint", "report",
          "evaluate", "predict", "track", "parallel")


def _blocks(path: pathlib.Path):
  """(line, marker, lang, body) of every fenced block; marker: the comment line just above it."""
  text = path.read_text()
  for m in FENCE.finditer(text):
    line = text.count("\n", 0, m.start()) + 1
    above = text[:m.start()].rstrip("\n ").rsplit("\n", 1)[-1].strip()
    marker = above if above.startswith("<!--") else ""
    body = "\n".join(x[len(m["indent"]):] for x in m["body"].splitlines())
    yield line, marker, m["lang"], body


def _runnable():
  return [(path, line, lang, body) for path in DOCS for line, marker, lang, body in _blocks(path)
          if marker == "<!-- runnable -->"]


def test_every_command_block_says_whether_it_runs():
  unmarked = [f"{p.relative_to(REPO)}:{line}" for p in DOCS if p not in GENERATED
              for line, marker, lang, _ in _blocks(p) if lang in ("bash", "python") and not marker]
  assert not unmarked, ("mark each block <!-- runnable --> or <!-- needs ... -->: "
                        + ", ".join(unmarked))
  assert len(_runnable()) >= 10


def _logical_lines(body: str) -> list[list[int]]:
  """Indices of the physical lines of each shell command (joined by a trailing backslash)."""
  groups, current = [], []
  for i, line in enumerate(body.splitlines()):
    current.append(i)
    if not line.rstrip().endswith("\\"):
      groups.append(current)
      current = []
  return groups + ([current] if current else [])


def shrink(body: str) -> str:
  """A shell block with `TINY` appended to every command that trains (before its comment), each
  key only where the command does not set it itself."""
  lines = body.splitlines()
  for group in _logical_lines(body):
    command = " ".join(lines[i] for i in group)
    if not (TRAINING.search(command) and "--config=" in command):
      continue
    tiny = dict(TINY)
    if "--mode=compare" in command:
      tiny["seeds"] = "'--config.seeds=(0,)'"
    if "label_budgets" in command:  # a budget needs every class: the target keeps its images
      tiny.pop("target.train_split")
    extra = [arg for key, arg in tiny.items() if f"--config.{key}=" not in command]
    last = lines[group[-1]]
    code, sep, comment = last.partition("  #")
    tail = f"  {sep.strip()}{comment}" if sep else ""
    lines[group[-1]] = f"{code.rstrip()} {' '.join(extra)}{tail}"
  return "\n".join(lines)


def localise(body: str, root: pathlib.Path, venv: str) -> str:
  return (body.replace("/tmp/", f"{root}/").replace("/tmp ", f"{root} ")
          .replace("./launch.sh", str(REPO / "launch.sh")).replace(".venv/", f"{venv}/"))


def test_shrink_appends_the_tiny_sizes_to_training_commands_only():
  body = ("./launch.sh local --mode=compare --config=smoke --workdir=/tmp/c   # the study\n"
          "tlflax --mode=transfer --config=smoke \\\n  --config.model.width=16\n"
          "./launch.sh local --mode=evaluate --model=/tmp/c/x --workdir=/tmp/c\n"
          "tlflax --mode=compare --config=smoke '--config.seeds=(1,)'\n"
          "tlflax --mode=rank --config=smoke --workdir=/tmp/c")
  out = shrink(body).splitlines()
  tiny = " ".join(TINY.values())
  assert out[0] == ("./launch.sh local --mode=compare --config=smoke --workdir=/tmp/c "
                    f"{tiny} '--config.seeds=(0,)'  # the study")
  assert out[1] == "tlflax --mode=transfer --config=smoke \\"
  assert out[2] == f"  --config.model.width=16 {tiny}"
  assert out[3] == body.splitlines()[3]
  assert out[4] == f"tlflax --mode=compare --config=smoke '--config.seeds=(1,)' {tiny}"
  assert out[5] == f"tlflax --mode=rank --config=smoke --workdir=/tmp/c {tiny}"
  budgets = shrink("tlflax --mode=compare --config=smoke --config.target.epochs=2 "
                   "--config.label_budgets=(5,0)")
  assert "train[:1024]" not in budgets and budgets.count("target.epochs") == 1


def _launcher_ready(venv: str) -> str:
  """Why launch.sh would install into the test environment instead of running, or ''."""
  stamp = pathlib.Path(venv, ".tlflax-installed")
  accel = os.environ.get("TLFLAX_ACCEL", "cpu")
  want = f"{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()} {accel}"
  have = stamp.read_text().strip() if stamp.exists() else ""
  if have not in (f"{want} run", f"{want} test"):
    return (f"{stamp} says {have!r}, not {want!r} run/test: run ./launch.sh test (or ./launch.sh "
            "install), which installs into this environment, instead of pytest directly")
  return ""


def test_every_runnable_block_runs_as_written(tmp_path):
  venv = sys.prefix
  problem = _launcher_ready(venv)
  assert not problem, problem
  root = tmp_path / "tmp"
  root.mkdir()
  env = {**os.environ, "TLFLAX_JAX_CACHE": JAX_CACHE, "TLFLAX_VENV": venv,
         "PATH": f"{venv}/bin:{os.environ['PATH']}", "WANDB_SILENT": "true"}
  seen = set()
  ran = []
  checkout = {p.name for p in REPO.iterdir()}
  for path, line, lang, body in _runnable():
    where = f"{path.relative_to(REPO)}:{line}"
    if body in seen:
      continue
    seen.add(body)
    if lang == "bash":
      script = localise(shrink(body), root, venv)
      argv = ["bash", "-euo", "pipefail", "-c", script]
    else:
      assert lang == "python", where
      argv = [sys.executable, "-c", localise(body, root, venv)]
    result = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=900,
                            check=False)
    output = result.stdout[-2000:] + result.stderr[-3000:]
    assert result.returncode == 0, f"{where} failed:\n{output}"
    if lang == "python":
      for expected in re.findall(r"^print\(.*\)\s+#\s*(.+)$", body, re.MULTILINE):
        assert expected.strip() in result.stdout, f"{where}: {expected!r} not printed"
    ran.append(where)
  assert len(ran) >= 10
  # launch.sh runs in the checkout: what a documented command writes goes to /tmp, not there.
  assert {p.name for p in REPO.iterdir()} - checkout <= {"tlflax.egg-info"}
  # What the commands promise to leave behind: the quick start's report judges the three claims,
  # predict wrote its one folder, the two-budget study drew labels.png, the pets run trained.
  claims = json.loads((root / "c" / "report" / "summary.json").read_text())["claims"]
  assert [c["verdict"] in ("holds", "does not hold", "cannot be judged") for c in claims] == \
      [True] * 3
  assert len(list((root / "c" / "predict").glob("*/predictions.csv"))) == 1
  assert (root / "study" / "report" / "labels.png").exists()
  pets = json.loads((root / "pets_run" / "scratch" / "summary.json").read_text())
  assert pets["class_names"] == ["cat", "dog"]
  # docs/rank.md: each arm started from its own source (no DIR/pretrain trained), and the three
  # candidates were matched with their fine-tuned runs.
  assert not (root / "rank" / "pretrain").exists()
  ranked = json.loads((root / "rank" / "rank" / "ranking.json").read_text())
  assert sorted(ranked["fine_tuned"]) == sorted([f"{root}/src1/pretrain", f"{root}/src3/pretrain",
                                                 "random"])
  assert ranked["correlation"]["logme"]["n"] == 3


# --- the names the docs cite ---------------------------------------------------------------------

def _prose(path: pathlib.Path) -> str:
  return path.read_text()


def _all_docs_text() -> list[tuple[str, str]]:
  return [(str(p.relative_to(REPO)), _prose(p)) for p in DOCS]


def _flat_keys() -> set[str]:
  keys = set(config_lib.flat_keys(config_lib.base_config()))
  return keys | {k.rsplit(".", 1)[0] for k in keys}


def test_every_cited_config_key_exists():
  keys = _flat_keys()
  missing = []
  for name, text in _all_docs_text():
    for key in re.findall(r"--config\.([A-Za-z_][\w.]*\w)", text):
      if key.split(".")[0] == "arms" or key in keys or key == "KEY":
        continue
      missing.append(f"{name}: --config.{key}")
    if name == "docs/design.md":  # names modules and functions (`report.summarize`), not keys
      continue
    # A key in a code span of its own, or set there: `target.min_steps`, `model.conv='auto'`.
    block = "|".join(BLOCKS)
    for key in re.findall(rf"`(?:config\.)?((?:{block})\.[a-z_]+(?:\.[a-z_]+)*)(?=[`=])", text):
      if key in keys or key in NOT_KEYS or key.endswith(
          (".md", ".py", ".json", ".jsonl", ".png", ".sh", ".safetensors")):
        continue
      missing.append(f"{name}: {key}")
  assert not missing, "\n".join(missing)


def test_every_cited_mode_and_shipped_config_exists():
  bad = []
  for name, text in _all_docs_text():
    bad += [f"{name}: --mode={m}" for m in re.findall(r"--mode=(\w+)", text)
            if m not in main_lib.MODES and m not in ("MODE",)]
    for value in re.findall(r"--config=([\w:]+)(?=[\s`'\")|])", text):
      if value in ("NAME", "FILE", "PATH") or value.startswith(("NAME:", "FILE:")):
        continue
      try:
        files.config_path(value)
      except Exception as e:  # noqa: BLE001 - the message is what the failure shows
        bad.append(f"{name}: --config={value}: {e}")
  assert not bad, "\n".join(bad)


def _defined(tree: ast.AST) -> dict[str, ast.AST | None]:
  """The names a module or class body binds at its top level (a class maps to its node)."""
  out = {}
  for node in getattr(tree, "body", []):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      out[node.name] = node if isinstance(node, ast.ClassDef) else None
    elif isinstance(node, (ast.Assign, ast.AnnAssign)):
      for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
        for name in ast.walk(target):
          if isinstance(name, ast.Name):
            out[name.id] = None
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      for alias in node.names:
        out[(alias.asname or alias.name).split(".")[0]] = None
  return out


def _source(parts: list[str]) -> pathlib.Path | None:
  """The file of module `tlflax.a.b` in this checkout (tlflax.configs is configs/), if any."""
  folder = REPO / "configs" if parts[:2] == ["tlflax", "configs"] else REPO / "tlflax"
  rest = parts[2:] if parts[:2] == ["tlflax", "configs"] else parts[1:]
  base = folder.joinpath(*rest)
  return next((path for path in (base.with_suffix(".py"), base / "__init__.py") if path.exists()),
              None)


def _resolves(dotted: str) -> bool:
  """Whether `tlflax.a.b.name.attr` names a module of this checkout and what its source defines,
  read with ast: nothing is imported (importing every CLI module would define absl flags twice,
  and which is imported first would decide what passes)."""
  parts = dotted.split(".")
  for i in range(len(parts), 0, -1):
    path = _source(parts[:i])
    if path is None:
      continue
    scope: ast.AST | None = ast.parse(path.read_text())
    for attr in parts[i:]:
      names = _defined(scope) if scope is not None else {}
      if attr not in names and not (scope is None and attr):
        return False
      scope = names.get(attr)
    return True
  return False


def test_every_cited_module_name_and_file_exists():
  bad = []
  for name, text in _all_docs_text():
    for dotted in set(re.findall(r"\btlflax(?:\.[A-Za-z_]\w*)+", text)):
      if not _resolves(dotted):
        bad.append(f"{name}: {dotted}")
    for file in set(re.findall(r"(?<![\w/.])((?:tlflax|tests|configs|benchmarks|docs|\.ci)/"
                               r"[\w/.-]*\w)", text)):
      if re.search(r"[A-Z]{3,}", file):  # a placeholder: configs/NAME.py, RUN/checkpoints/STEP
        continue
      if not (REPO / file).exists() and not (REPO / file.rstrip(".")).exists():
        bad.append(f"{name}: {file}")
  assert not bad, "\n".join(bad)


def _anchors(text: str) -> set[str]:
  """GitHub's anchors of a page's headings."""
  out = set()
  for heading in re.findall(r"^#+ (.+)$", text, re.MULTILINE):
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
    out.add(slug)
  return out


def test_every_relative_link_and_anchor_exists():
  bad = []
  for path in DOCS:
    text = re.sub(r"`[^`\n]*`", "", path.read_text())  # code spans are not links
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
      if target.startswith(("http://", "https://", "mailto:")):
        continue
      file, _, anchor = target.partition("#")
      dest = (path.parent / file).resolve() if file else path
      if not dest.exists():
        bad.append(f"{path.name}: {target}")
      elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest.read_text()):
        bad.append(f"{path.name}: {target} (no such heading)")
  assert not bad, "\n".join(bad)


def test_the_python_examples_in_docs_parse():
  bad = []
  for path in DOCS:
    for line, _, lang, body in _blocks(path):
      if lang == "python":
        try:
          ast.parse(body)
        except SyntaxError as e:
          bad.append(f"{path.name}:{line}: {e}")
  assert not bad, "\n".join(bad)
