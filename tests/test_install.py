"""tlflax as users install it: a wheel in a fresh venv, the `tlflax` console script run from an
empty folder, configs found by name inside the installed package.

The venv sees this environment's packages (jax, flax, ...) through a .pth file and gets tlflax
itself only from the wheel (`--no-deps`), so the test installs nothing from the network but the
build backend pip fetches to build the wheel."""

import os
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

from conftest import JAX_CACHE

REPO = pathlib.Path(__file__).resolve().parent.parent
_SKIP = shutil.ignore_patterns(".git", ".venv", "*.egg-info", "build", "dist", "runs",
                               "__pycache__", ".pytest_cache", "slurm")


def _run(cmd, cwd, timeout=300):
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  env["TLFLAX_JAX_CACHE"] = JAX_CACHE
  return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True,
                        timeout=timeout, check=False)


def test_the_wheel_installs_and_runs_from_an_empty_folder(tmp_path):
  source = tmp_path / "src"
  shutil.copytree(REPO, source, ignore=_SKIP)
  built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist",
                source], tmp_path)
  assert built.returncode == 0, built.stderr[-3000:]
  wheel = next((tmp_path / "dist").glob("tlflax-*.whl"))
  names = zipfile.ZipFile(wheel).namelist()
  assert {"tlflax/main.py", "tlflax/configs/smoke.py", "tlflax/configs/cifar10_to_cifar100.py",
          "tlflax/configs/cifar10_to_cifar100_arms.py"} <= set(names)

  venv = tmp_path / "venv"
  made = _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", venv],
              tmp_path)
  assert made.returncode == 0, made.stderr
  python = venv / "bin" / "python"
  site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
              tmp_path).stdout.strip()
  # This environment's packages, after the venv's own (where the wheel's tlflax goes).
  pathlib.Path(site, "_tlflax_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  installed = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q",
                    wheel], tmp_path)
  assert installed.returncode == 0, installed.stderr[-3000:]

  empty = tmp_path / "empty"
  empty.mkdir()
  tlflax = venv / "bin" / "tlflax"
  where = _run([python, "-c", ("import tlflax, tlflax.configs, tlflax.config.files as f, tlflax.config.cli as c; "
                "print(tlflax.__file__, tlflax.configs.__file__, f.config_path(c.DEFAULT))")],
               empty)
  assert where.returncode == 0, where.stderr[-2000:]
  files = where.stdout.split()
  assert len(files) == 3 and all(f.startswith(site) for f in files), where.stdout
  assert files[2].endswith("tlflax/configs/cifar10_to_cifar100.py")

  helped = _run([tlflax, "--helpshort"], empty, timeout=120)
  assert helped.returncode == 0, helped.stderr[-2000:]
  text = helped.stdout + helped.stderr
  for expected in ("--mode", "--workdir", "--config:", "--coordinator", "pretrain", "compare",
                   "config    print every config key"):
    assert expected in text, (expected, text[:3000])

  workdir = empty / "runs"
  ran = _run([tlflax, "--mode=scratch", "--config=smoke", f"--workdir={workdir}",
              "--config.model.name=resnet10", "--config.model.width=4",
              "--config.target.image_size=16", "--config.target.epochs=1",
              "--config.target.train_split=train[:256]", "--config.target.val_split=",
              "--config.target.test_split=test[:100]", "--config.target.batch_size=32",
              "--config.target.eval_batch_size=100"], empty)
  assert ran.returncode == 0, ran.stderr[-3000:]
  assert (workdir / "scratch" / "summary.json").exists()
  assert sorted(p.name for p in empty.iterdir()) == ["runs"]  # wrote nothing else here
