"""Every door of a trained model refuses bad input in one line and leaves the workdir as it was:
`tlflax.load`, `--config.transfer.init_from`, `--mode=evaluate|predict|export`, `python -m
tlflax.use.convert` and `hf://`, each walked through the malformed files people have lying
around. In-process through `main.run` (what the command line turns into exit 2 and one line);
a few end to end through the command line, for the exit code and the single line of stderr."""

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, run_cli
from test_weights import HUB_CHECK, _hub_cache, random_state

import tlflax
from tlflax import main
from tlflax.config import cli
from tlflax.errors import UserError
from tlflax.use import convert

safetensors_numpy = pytest.importorskip("safetensors.numpy")

GOOD = random_state("resnet18_imagenet", classes=10)
MODEL = ["--config.model.name=resnet18_imagenet", "--config.model.width=8"]


def _save(path: pathlib.Path, state: dict) -> pathlib.Path:
  safetensors_numpy.save_file(state, str(path))
  return path


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, tuple[pathlib.Path, str]]:
  """{case: (path, words its one-line error must hold)}: the malformed model paths."""
  d = tmp_path_factory.mktemp("bad")
  good = _save(d / "good.safetensors", GOOD)
  cases = {}
  (d / "empty.safetensors").write_bytes(b"")
  cases["empty file"] = (d / "empty.safetensors", "as safetensors (")
  (d / "cut.safetensors").write_bytes(good.read_bytes()[:-3000])
  cases["truncated"] = (d / "cut.safetensors", "is damaged")
  (d / "text.safetensors").write_text("not weights at all")
  cases["not safetensors"] = (d / "text.safetensors", "the file is damaged or of another format")
  (d / "model.pth").write_bytes(b"\x80\x04 a pickle")
  cases["pickle .pth"] = (d / "model.pth", "is a pickle, and loading one runs whatever code")
  (d / "model.bin").write_bytes(b"\x80\x04 a pickle")
  cases["pickle .bin"] = (d / "model.bin", "is a pickle")
  (d / "folder").mkdir()
  cases["a folder"] = (d / "folder", "holds no tlflax checkpoint: point")
  cases["missing file"] = (d / "nowhere.safetensors", "does not exist: point")
  cases["missing step"] = (d / "folder" / "checkpoints" / "999", "holds no tlflax checkpoint")
  cases["wrong shape"] = (_save(d / "shape.safetensors", {
      **GOOD, "layer3.0.conv2.weight": np.zeros((32, 32, 1, 1), np.float32)}),
      "layer3.0.conv2.weight has shape (32, 32, 1, 1), but resnet18_imagenet of width 8")
  cases["wrong dtype"] = (_save(d / "dtype.safetensors", {
      **GOOD, "layer1.0.conv1.weight": GOOD["layer1.0.conv1.weight"].astype(np.int32)}),
      "layer1.0.conv1.weight holds int32 values, not floating point")
  cases["missing key"] = (_save(d / "missing.safetensors", {
      k: v for k, v in GOOD.items() if k != "layer2.1.bn1.running_mean"}),
      "lacks layer2.1.bn1.running_mean")
  cases["extra key"] = (_save(d / "extra.safetensors", {
      **GOOD, "layer2.0.se.fc.weight": np.zeros((4, 16), np.float32)}),
      "keys that map to no tlflax parameter: layer2.0.se.fc.weight")
  cases["DataParallel"] = (_save(d / "dp.safetensors", {f"module.{k}": v for k, v in GOOD.items()}),
                           "saved from torch.nn.DataParallel")
  cases["no ResNet"] = (_save(d / "vit.safetensors", {"cls_token": np.zeros((1, 8), np.float32)}),
                        "is not a ResNet in torchvision / timm layout")
  cases["unsupported depth"] = (_save(d / "r152.safetensors", {
      **GOOD, **{f"layer3.{i}.conv1.weight": GOOD["layer3.1.conv1.weight"] for i in (2, 3)}}),
      "which tlflax has no model for")
  (d / "model.pt").write_bytes(b"PK\x03\x04 a zipped pickle")
  cases["pickle .pt"] = (d / "model.pt", "is a pickle")
  cases["5x5 stem"] = (_save(d / "stem.safetensors", {
      **GOOD, "conv1.weight": np.zeros((8, 3, 5, 5), np.float32)}),
      "conv1.weight has shape (8, 3, 5, 5), but resnet18 of width 8 has (8, 3, 3, 3)")
  cases["narrow head"] = (_save(d / "head.safetensors", {
      **GOOD, "fc.weight": np.zeros((10, 32), np.float32)}),
      "fc.weight has shape (10, 32), but resnet18_imagenet of width 8 has (10, 64)")
  (d / "beside").mkdir()
  _save(d / "beside" / "model.safetensors", GOOD)
  (d / "beside" / "config.json").write_text(json.dumps({"num_classes": 5}))
  cases["config.json beside"] = (d / "beside" / "model.safetensors",
                                 "its config.json says 5 classes, its head has 10")
  return cases


def _snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file()
          else "dir" for p in sorted(folder.rglob("*"))}


@pytest.fixture
def workdir(tmp_path):
  work = tmp_path / "work"
  (work / "earlier").mkdir(parents=True)
  (work / "earlier" / "notes.txt").write_text("must survive every refusal")
  return work


def _doors(path: str, work: pathlib.Path):
  """(door, call) for every door, each given the bad model `path`."""
  smoke = cli.load("smoke")
  for key, value in (("model.name", "resnet18_imagenet"), ("model.width", 8)):
    block, leaf = key.split(".")
    smoke[block][leaf] = value
  images = pathlib.Path(REPO) / "docs" / "images"
  transfer = smoke.copy_and_resolve_references()
  transfer.transfer.init_from = path
  yield "tlflax.load", lambda: tlflax.load(path)
  yield "init_from", lambda: main.run("transfer", transfer, str(work))
  yield "evaluate", lambda: main.run("evaluate", smoke, str(work), model=path)
  yield "predict", lambda: main.run("predict", smoke, str(work), model=path,
                                    input_spec=str(images))
  yield "export", lambda: main.run("export", smoke, str(work), model=path)
  yield "convert", lambda: convert.export(path, str(work / "out.safetensors"))


def test_every_door_refuses_every_malformed_model_in_one_line(bad, workdir):
  before = _snapshot(workdir)
  checked = 0
  for case, (path, words) in bad.items():
    for door, call in _doors(str(path), workdir):
      with pytest.raises(UserError) as e:
        call()
      message = str(e.value)
      assert words in message, (case, door, message)
      assert "\n" not in message and "Traceback" not in message, (case, door)
      assert _snapshot(workdir) == before, (case, door)
      checked += 1
  assert checked == len(bad) * 6 and len(bad) == 19


def test_each_door_names_the_flag_the_user_typed(bad, workdir):
  path = str(bad["a folder"][0])
  said = {}
  for door, call in _doors(path, workdir):
    with pytest.raises(UserError) as e:
      call()
    said[door] = str(e.value)
  assert "point config.transfer.init_from at" in said["init_from"]
  for door in ("evaluate", "predict", "export"):
    assert "point --model at" in said[door] and "init_from" not in said[door]
  assert "point --in at" in said["convert"] and "point tlflax.load at" in said["tlflax.load"]


def test_converts_output_is_checked_before_any_work_and_never_left_half_written(tmp_path):
  good = _save(tmp_path / "good.safetensors", GOOD)
  (tmp_path / "a_dir.safetensors").mkdir()
  for out, words in ((tmp_path / "o.pth", "name the file o.safetensors"),
                     (tmp_path / "a_dir.safetensors", "is a folder: name a file in it"),
                     (tmp_path / "no" / "such" / "o.safetensors", "does not exist: create it"),
                     (pathlib.Path("/proc/o.safetensors"), "cannot be written")):
    with pytest.raises(UserError) as e:
      convert.export(str(good), str(out))
    assert words in str(e.value) and "\n" not in str(e.value), out
    assert not out.exists() or out.is_dir()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir.safetensors", "good.safetensors"]
  out = tmp_path / "model.safetensors"  # a good one: the umask's permissions, no leftovers
  old = os.umask(0o027)
  try:
    convert.export(str(good), str(out))
  finally:
    os.umask(old)
  assert (out.stat().st_mode & 0o777) == 0o640
  assert safetensors_numpy.load_file(str(out))["fc.weight"].shape == (10, 64)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".convert-")]


def test_the_command_line_says_one_line_and_exits_2(bad, tmp_path):
  """End to end: each command prints one error line and nothing else of note, exits 2, and
  writes nothing."""
  cut, pth = str(bad["truncated"][0]), str(bad["pickle .pth"][0])
  work = tmp_path / "w"
  commands = {
      "evaluate": [sys.executable, "-m", "tlflax.main", "--mode=evaluate", "--config=smoke",
                   f"--model={cut}", f"--workdir={work}", *MODEL],
      "init_from": [sys.executable, "-m", "tlflax.main", "--mode=transfer", "--config=smoke",
                    f"--config.transfer.init_from={pth}", f"--workdir={work}", *MODEL],
      "convert": [sys.executable, "-m", "tlflax.use.convert", f"--in={cut}",
                  f"--out={tmp_path / 'o.safetensors'}"]}
  for door, command in commands.items():
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    # absl's INFO lines (the devices in use) are progress, not output about the error
    lines = [x for x in result.stderr.splitlines() if x.strip() and not re.match(r"I\d{4} ", x)]
    assert result.returncode == 2, (door, result.stderr[-2000:])
    assert len(lines) == 1 and ": error:" in lines[0], (door, result.stderr[-2000:])
    assert not work.exists() and not (tmp_path / "o.safetensors").exists(), door
  result = run_cli(["--mode=predict", "--config=smoke", f"--model={cut}",
                    f"--input={tmp_path / 'none'}", f"--workdir={work}"], tmp_path)
  assert result.returncode == 2 and "--input names files that do not exist" in result.stderr
  assert not work.exists()


def test_hub_names_are_refused_in_one_line_when_unknown_malformed_or_contradicted(tmp_path):
  good = _save(tmp_path / "hub.safetensors", GOOD)
  env = {}
  for repo, config in (("org/ok", {"architecture": "resnet18", "num_classes": 10}),
                       ("org/bad-mean", {"pretrained_cfg": {"mean": [0.5], "std": [1, 1, 1]}}),
                       ("org/odd-size", {"pretrained_cfg": {"input_size": [3, 224, 200]}}),
                       ("org/list", [1, 2, 3])):
    env = _hub_cache(tmp_path / "hf", repo, good, config)
  names = ["hf://org/ok@not-a-revision", "hf://org/bad-mean", "hf://org/odd-size", "hf://org/list",
           "hf://org/never-cached"]
  result = subprocess.run([sys.executable, "-c", HUB_CHECK, *names], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  expected = {"hf://org/ok@not-a-revision": "--revision not-a-revision` fills the cache",
              "hf://org/bad-mean": "its config.json's mean is [0.5], not three numbers",
              "hf://org/odd-size": "input_size [3, 224, 200] is not (3, S, S)",
              "hf://org/list": "is not a valid config.json (not a JSON object)",
              "hf://org/never-cached": "`hf download org/never-cached model.safetensors"}
  for name, words in expected.items():
    assert words in got[name].get("error", ""), (name, got[name])
    assert "\n" not in got[name]["error"]
