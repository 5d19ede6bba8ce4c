"""launch.sh: the TPU and SLURM launches (--dry-run: the exact commands), accelerator choice.

launch.sh is copied into a folder whose path has a space, so quoting is tested where it breaks.
"""

import shlex
import shutil
import subprocess

import pytest
from conftest import REPO

ODD = ["--mode=compare", "--workdir=/shared/my runs", "--config.transfer.freeze=('^stem_', \"it's\")"]


@pytest.fixture
def launcher(tmp_path):
  folder = tmp_path / "my checkout"
  folder.mkdir()
  shutil.copy(REPO / "launch.sh", folder / "launch.sh")
  (folder / "pyproject.toml").write_text("")

  def run(*args, env=None):
    return subprocess.run(["bash", str(folder / "launch.sh"), *args], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})

  run.folder = folder
  return run


def test_tpu_dry_run_copies_the_tree_and_starts_every_worker(launcher):
  result = launcher("tpu", "--name=my-tpu", "--zone=us-central2-b", "--project=lab", "--dry-run",
                    "--", *ODD)
  assert result.returncode == 0, result.stderr
  pack, scp, ssh = result.stdout.strip().splitlines()
  assert pack.startswith("git ls-files -z --cached --others --exclude-standard | tar --null")
  archive = shlex.split(pack)[-1]
  assert shlex.split(scp) == ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
                              "my-tpu:~/tlflax.tgz", "--zone=us-central2-b", "--worker=all",
                              "--project=lab"]
  ssh_args = shlex.split(ssh)
  assert ssh_args[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert {"--zone=us-central2-b", "--worker=all", "--project=lab"} <= set(ssh_args)
  remote = next(a for a in ssh_args if a.startswith("--command="))[len("--command="):]
  steps = remote.split(" && ")
  assert steps[:3] == ["mkdir -p ~/tlflax", "tar -xzf ~/tlflax.tgz -C ~/tlflax", "cd ~/tlflax"]
  started = shlex.split(steps[3])
  assert started[:4] == ["TLFLAX_ACCEL=tpu", "./launch.sh", "local", "--distributed"]
  assert started[4:] == ODD  # every forwarded argument arrives intact on the worker


def test_slurm_dry_run_prints_the_sbatch_script(launcher):
  result = launcher("slurm", "--nodes=2", "--gpus-per-node=8", "--time=02:00:00",
                    "--partition=gpu", "--dry-run", "--", *ODD)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.strip().splitlines()
  assert lines[1] == "#!/usr/bin/env bash"
  for directive in ("--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8", "--time=02:00:00",
                    "--partition=gpu"):
    assert f"#SBATCH {directive}" in lines
  assert shlex.split(next(x for x in lines if x.startswith("cd "))) == ["cd", str(launcher.folder)]
  assert "export TLFLAX_ACCEL=cuda12" in lines
  install = lines.index(next(x for x in lines if x.startswith("./launch.sh install")))
  srun = next(i for i, x in enumerate(lines) if x.startswith("srun "))
  assert install < srun  # install once before the processes start
  assert shlex.split(lines[srun]) == ["srun", "--ntasks-per-node=1", "./launch.sh", "local",
                                      "--distributed", *ODD]
  script_name = lines[0].removeprefix("# ")
  assert lines[-1] == f"sbatch {script_name}" and script_name.startswith("slurm/tlflax-")
  assert not (launcher.folder / "slurm").exists()  # a dry run writes nothing


def test_slurm_keeps_the_accelerator_the_user_chose(launcher):
  result = launcher("slurm", "--dry-run", "--", "--mode=scratch", env={"TLFLAX_ACCEL": "cuda13"})
  assert "export TLFLAX_ACCEL=cuda13" in result.stdout.splitlines()
  assert "#SBATCH --nodes=1" in result.stdout and "#SBATCH --gpus-per-node=1" in result.stdout


@pytest.mark.parametrize("args,env,expected", [
    (["tpu", "--zone=z", "--", "--mode=scratch"], None, "tpu needs --name=VM and --zone=ZONE"),
    (["tpu", "--name=v", "--zone=z", "--bogus"], None, "unknown tpu option --bogus"),
    (["slurm", "--nodes=0", "--dry-run"], None, "--nodes must be >= 1"),
    (["install"], {"TLFLAX_ACCEL": "rocm"}, "TLFLAX_ACCEL=rocm is not one of cpu, cuda12"),
    (["bogus"], None, "usage: ./launch.sh local"),
])
def test_launcher_mistakes_end_with_exit_2(launcher, args, env, expected):
  result = launcher(*args, env=env)
  assert result.returncode == 2
  assert expected in result.stderr
  assert not (launcher.folder / ".venv").exists()


def test_each_command_installs_what_it_needs_and_passes_its_arguments(launcher):
  """launch.sh against a stand-in venv whose python records its arguments: `local` installs
  what running needs, `test` adds the test extras and hands pytest only what the user typed."""
  bin_dir = launcher.folder / ".venv" / "bin"
  bin_dir.mkdir(parents=True)
  log = launcher.folder / "calls.log"
  (bin_dir / "python").write_text(f'#!/bin/sh\necho "$*" >> "{log}"\n')
  (bin_dir / "python").chmod(0o755)

  def calls(*args, env=None):
    log.write_text("")
    result = launcher(*args, env=env)
    assert result.returncode == 0, result.stderr
    return log.read_text().splitlines()

  stamp = launcher.folder / ".venv" / ".tlflax-installed"
  assert calls("local", "--mode=config") == ["-m pip install -q --upgrade pip",
                                             "-m pip install -q -e .", "-m tlflax.main --mode=config"]
  assert stamp.read_text().split()[1:] == ["cpu", "run"]
  assert calls("local", "--mode=config") == ["-m tlflax.main --mode=config"]  # installed already
  pytest_argv = "-m pytest -n auto --maxprocesses=4 --dist loadfile"
  assert calls("test", "tests/test_data.py", "-k", "split") == [
      "-m pip install -q --upgrade pip", "-m pip install -q -e .[test]",
      f"{pytest_argv} tests/test_data.py -k split"]
  assert calls("test") == [pytest_argv]  # pyproject.toml's testpaths: the whole suite
  assert calls("install") == []  # the test installation serves running too
  assert calls("local", env={"TLFLAX_ACCEL": "cuda12"})[1:] == [
      "-m pip install -q -e .[cuda12]", "-m tlflax.main"]
  assert stamp.read_text().split()[1:] == ["cuda12", "run"]
