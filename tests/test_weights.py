"""Weights people already have: torchvision / timm ResNets in safetensors (a file or a laid-out
hub cache) imported exactly, transfer runs from them, tlflax.load, export back, bad files.

The reference for "exactly" is a forward pass written here in numpy from torchvision's
definitions (convolutions padded k // 2, BatchNorm in eval mode with eps 1e-5, a max-pool padded
with -inf, v1.5 Bottlenecks), run on a random state dict in torchvision's key layout.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import run_cli

import tlflax
from tlflax.errors import UserError
from tlflax.models import resnet, torch_layout, weights
from tlflax.use import convert

safetensors_numpy = pytest.importorskip("safetensors.numpy")

STAGES = {"resnet18_imagenet": ((2, 2, 2, 2), False), "resnet50_imagenet": ((3, 4, 6, 3), True),
          "resnet34_imagenet": ((3, 4, 6, 3), False), "resnet18": ((2, 2, 2, 2), False)}


def random_state(name: str, width: int = 8, classes: int = 12, seed: int = 0) -> dict:
  """A torchvision-layout state dict of `name` with random weights and BatchNorm statistics
  (its keys and shapes from tlflax's export, its values anything but an init)."""
  variables = jax.device_get(resnet.init_model(resnet.create_model(name, classes, width), 0,
                                               (32, 32, 3)))
  rng = np.random.default_rng(seed)
  out = {}
  for key, value in torch_layout.to_state_dict(variables).items():
    if key.endswith("num_batches_tracked"):
      out[key] = value
    elif key.endswith("running_var") or key.endswith(".weight") and value.ndim == 1:
      out[key] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    elif value.ndim == 4:  # He-scaled, so activations stay of order 1 through the depth
      fan_in = np.prod(value.shape[1:])
      out[key] = (rng.normal(0, 1, value.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
    else:
      out[key] = rng.normal(0, 0.1, value.shape).astype(np.float32)
  return out


# --- A numpy reference of torchvision's ResNet, NCHW --------------------------------------------

def _conv(x, w, stride):
  pad = w.shape[2] // 2
  x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
  windows = np.lib.stride_tricks.sliding_window_view(x, w.shape[2:], axis=(2, 3))
  return np.einsum("nchwij,ocij->nohw", windows[:, :, ::stride, ::stride], w)


def _bn(x, sd, name):
  scale = sd[f"{name}.weight"] / np.sqrt(sd[f"{name}.running_var"] + 1e-5)
  return (x - sd[f"{name}.running_mean"][:, None, None]) * scale[:, None, None] + \
      sd[f"{name}.bias"][:, None, None]


def _max_pool(x):
  x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
  return np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2] \
      .max(axis=(-2, -1))


def reference_logits(sd: dict, images_nhwc: np.ndarray, name: str) -> np.ndarray:
  sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
  stages, bottleneck = STAGES[name]
  imagenet = name.endswith("_imagenet")
  x = images_nhwc.transpose(0, 3, 1, 2).astype(np.float64)
  x = np.maximum(_bn(_conv(x, sd["conv1.weight"], 2 if imagenet else 1), sd, "bn1"), 0)
  if imagenet:
    x = _max_pool(x)
  relu = lambda t: np.maximum(t, 0)
  for i, blocks in enumerate(stages, 1):
    for j in range(blocks):
      p, stride = f"layer{i}.{j}", 2 if i > 1 and j == 0 else 1
      if bottleneck:
        y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], 1), sd, f"{p}.bn1"))
        y = relu(_bn(_conv(y, sd[f"{p}.conv2.weight"], stride), sd, f"{p}.bn2"))
        y = _bn(_conv(y, sd[f"{p}.conv3.weight"], 1), sd, f"{p}.bn3")
      else:
        y = relu(_bn(_conv(x, sd[f"{p}.conv1.weight"], stride), sd, f"{p}.bn1"))
        y = _bn(_conv(y, sd[f"{p}.conv2.weight"], 1), sd, f"{p}.bn2")
      if f"{p}.downsample.0.weight" in sd:
        x = _bn(_conv(x, sd[f"{p}.downsample.0.weight"], stride), sd, f"{p}.downsample.1")
      x = relu(x + y)
  features = x.mean(axis=(2, 3))
  return features @ sd["fc.weight"].T + sd["fc.bias"]


# --- Import ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("resnet18_imagenet", 64), ("resnet50_imagenet", 64),
                                       ("resnet18", 32)])
def test_imported_weights_give_the_reference_logits(tmp_path, name, size):
  sd = random_state(name)
  file = tmp_path / "model.safetensors"
  safetensors_numpy.save_file(sd, str(file))
  model, variables, info = tlflax.load(str(file))
  assert (info["model"], info["width"], info["num_classes"]) == (name, 8, 12)
  assert info["sha256"] == weights.sha256(str(file)) and info["mean"] == [0.485, 0.456, 0.406]
  images = np.random.default_rng(1).normal(0, 1, (3, size, size, 3)).astype(np.float32)
  got = np.asarray(model.apply(variables, images, train=False), np.float64)
  want = reference_logits(sd, images, name)
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  print(f"{name}: logits relative error {rel:.2e} (|logits| {np.abs(want).mean():.2f})")
  assert rel < 1e-4


def test_the_architecture_is_read_from_keys_and_shapes():
  shapes = {k: v.shape for k, v in random_state("resnet50_imagenet", width=16).items()}
  assert torch_layout.architecture(shapes, "f") == torch_layout.Architecture(
      "resnet50_imagenet", 16, 12)
  odd = {k: v for k, v in shapes.items() if not k.startswith("layer3.5.")}
  with pytest.raises(UserError, match=r"stages \(3, 4, 5, 3\) and Bottlenecks"):
    torch_layout.architecture(odd, "f")
  with pytest.raises(UserError, match="keys that map to no tlflax parameter: "
                     "layer1.0.se.fc.weight"):
    torch_layout.to_variables({"layer1.0.se.fc.weight": np.zeros((2, 2))}, "f")


# --- Runs from imported weights, tlflax.load of a run, export back ---------------------------------

SHRINK = ["--config=smoke", "--config.model.name=resnet18_imagenet", "--config.model.width=8",
          "--config.target.image_size=32", "--config.target.crop_padding=2",
          "--config.target.train_split=train[:256]", "--config.target.test_split=test[:64]",
          "--config.target.val_split=", "--config.target.epochs=1", "--config.target.batch_size=32",
          "--config.target.eval_batch_size=64", "--config.transfer.freeze=stages:2",
          "--config.log_every_steps=4"]


def _hub_cache(root: pathlib.Path, repo: str, file: pathlib.Path, config: dict) -> dict:
  """A Hugging Face cache holding `repo`'s model.safetensors and config.json, as
  huggingface_hub lays it out; the environment that reads it offline."""
  revision = "0123456789abcdef0123456789abcdef01234567"
  base = root / "hub" / f"models--{repo.replace('/', '--')}"
  snapshot = base / "snapshots" / revision
  snapshot.mkdir(parents=True)
  (snapshot / "model.safetensors").write_bytes(file.read_bytes())
  (snapshot / "config.json").write_text(json.dumps(config))
  (base / "refs").mkdir()
  (base / "refs" / "main").write_text(revision)
  return {"HF_HOME": str(root), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("weights")
  file = tmp / "resnet18.safetensors"
  safetensors_numpy.save_file(random_state("resnet18_imagenet", classes=1000), str(file))
  return file


@pytest.fixture(scope="module")
def file_run(imagenet_file, tmp_path_factory):
  work = tmp_path_factory.mktemp("from_file")
  result = run_cli(["--mode=transfer", f"--workdir={work}",
                    f"--config.transfer.init_from={imagenet_file}"] + SHRINK, work)
  assert result.returncode == 0, result.stderr[-3000:]
  return work / "transfer", result


def test_a_transfer_run_starts_from_a_safetensors_file(imagenet_file, file_run):
  run_dir, result = file_run
  assert "kept 100 leaves, re-initialised 2 (params/head/bias, params/head/kernel)" in \
      result.stderr
  assert "freeze 'stages:2'" in result.stderr
  config = json.loads((run_dir / "config.json").read_text())
  digest = weights.sha256(str(imagenet_file))
  assert config["init"]["sha256"] == digest and config["init"]["run"] == str(imagenet_file)
  stats = json.loads((run_dir / "data_stats.json").read_text())
  assert stats["mean"] == pytest.approx([0.485, 0.456, 0.406]) and stats["from"] == str(
      imagenet_file)
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["init"]["sha256"] == digest and summary["final"]["test_count"] == 64
  # The frozen stem and stages 1-2 are the file's, bit for bit.
  _, variables, _ = tlflax.load(str(run_dir))
  sd = safetensors_numpy.load_file(str(imagenet_file))
  kernel = np.asarray(variables["params"]["stage2_block1"]["conv1"]["kernel"])
  np.testing.assert_array_equal(kernel, sd["layer2.0.conv1.weight"].transpose(2, 3, 1, 0))


def test_a_changed_weights_file_is_refused(imagenet_file, file_run, tmp_path):
  run_dir, _ = file_run
  changed = tmp_path / "resnet18.safetensors"
  safetensors_numpy.save_file(random_state("resnet18_imagenet", classes=1000, seed=5),
                              str(changed))
  result = run_cli(["--mode=transfer", f"--workdir={run_dir.parent}",
                    f"--config.transfer.init_from={changed}"] + SHRINK, tmp_path)
  assert result.returncode == 2
  assert "holds a run with another config (init.sha256: " in result.stderr


def test_a_transfer_run_from_the_hub_cache_offline(imagenet_file, tmp_path):
  env = _hub_cache(tmp_path / "hf", "tiny-org/resnet18-test", imagenet_file,
                   {"pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}})
  result = run_cli(["--mode=transfer", f"--workdir={tmp_path / 'w'}",
                    "--config.transfer.init_from=hf://tiny-org/resnet18-test"] + SHRINK,
                   tmp_path, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  run_dir = tmp_path / "w" / "transfer"
  init = json.loads((run_dir / "summary.json").read_text())["init"]
  assert init["run"] == "hf://tiny-org/resnet18-test"
  assert init["sha256"] == weights.sha256(str(imagenet_file))
  assert json.loads((run_dir / "data_stats.json").read_text())["mean"] == [0.5, 0.5, 0.5]
  missing = run_cli(["--mode=transfer", f"--workdir={tmp_path / 'w2'}",
                     "--config.transfer.init_from=hf://tiny-org/not-cached"] + SHRINK,
                    tmp_path, env=env)
  assert missing.returncode == 2 and not (tmp_path / "w2").exists()
  assert "cannot get model.safetensors of hf://tiny-org/not-cached (" in missing.stderr


def test_load_a_run_and_export_it_back_to_torchvision_layout(file_run, tmp_path):
  run_dir, _ = file_run
  model, variables, info = tlflax.load(str(run_dir))
  assert (info["model"], info["num_classes"], info["image_size"]) == ("resnet18_imagenet", 100, 32)
  assert info["checkpoint"].endswith("/checkpoints/8") and info["padding"] == "torch"
  out = tmp_path / "export.safetensors"
  convert.export(str(run_dir), str(out))
  sd = safetensors_numpy.load_file(str(out))
  assert len(sd) == 122 and sd["bn1.num_batches_tracked"].dtype == np.int64  # torchvision's
  assert sd["fc.weight"].shape == (100, 512 // 8)
  images = np.random.default_rng(2).normal(0, 1, (4, 32, 32, 3)).astype(np.float32)
  back, back_vars, back_info = tlflax.load(str(out))
  assert back_info["image_size"] == 32 and back_info["mean"] == pytest.approx(info["mean"])
  np.testing.assert_array_equal(np.asarray(model.apply(variables, images, train=False)),
                                np.asarray(back.apply(back_vars, images, train=False)))
  np.testing.assert_allclose(reference_logits(sd, images, "resnet18_imagenet"),
                             np.asarray(model.apply(variables, images, train=False)),
                             rtol=1e-4, atol=1e-4)


# --- Mistakes ----------------------------------------------------------------------------------------

def test_bad_weight_files_are_one_line_and_write_nothing(imagenet_file, tmp_path):
  sd = safetensors_numpy.load_file(str(imagenet_file))
  cases = {}
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(imagenet_file.read_bytes()[:-5000])
  cases["truncated"] = (cut, "cut.safetensors as safetensors (")
  deeper = tmp_path / "resnet34.safetensors"
  safetensors_numpy.save_file(random_state("resnet34_imagenet", classes=1000), str(deeper))
  cases["depth"] = (deeper, ("holds resnet34_imagenet of width 8, but the config trains "
                            "resnet18_imagenet of width 8: set --config.model.name=resnet34_imagenet"))
  missing = tmp_path / "missing.safetensors"
  safetensors_numpy.save_file({k: v for k, v in sd.items() if k != "layer3.1.bn2.running_var"},
                              str(missing))
  cases["missing"] = (missing, "lacks layer3.1.bn2.running_var ((32,)) of resnet18_imagenet")
  pickle = tmp_path / "model.pth"
  pickle.write_bytes(b"not read")
  cases["pickle"] = (pickle, "is a pickle, and loading one runs whatever code it holds: convert")
  for name, (file, expected) in cases.items():
    work = tmp_path / f"w_{name}"
    result = run_cli(["--mode=transfer", f"--workdir={work}",
                      f"--config.transfer.init_from={file}"] + SHRINK, tmp_path, timeout=300)
    errors = [x for x in result.stderr.splitlines() if x.startswith("tlflax: error:")]
    assert result.returncode == 2 and len(errors) == 1, (name, result.stderr[-2000:])
    assert expected in errors[0], (name, errors[0])
    assert not work.exists() or not any(work.rglob("*")), name
  assert "safetensors.torch.save_file(torch.load(" in errors[0]  # the pickle's two lines


def test_export_refuses_a_model_with_same_padding(file_run, tmp_path):
  run_dir, _ = file_run
  config = json.loads((run_dir / "config.json").read_text())
  old = tmp_path / "old"
  (old / "checkpoints").mkdir(parents=True)
  os.symlink(run_dir / "checkpoints" / "8", old / "checkpoints" / "8")
  del config["model"]["padding"]  # a run folder from before the key: it padded 'same'
  (old / "config.json").write_text(json.dumps(config))
  with pytest.raises(UserError, match="trained with model.padding='same'"):
    convert.export(str(old), str(tmp_path / "x.safetensors"))


# --- Where PyTorch is importable: the same against a module of torchvision's structure ----------

def _torch_resnet(name: str, width: int, classes: int):
  """A PyTorch ResNet built as torchvision builds it (its module names, so its state dict keys
  are torchvision's); the CIFAR models with tlflax's stem."""
  from torch import nn
  stages, bottleneck = STAGES[name]
  expansion = 4 if bottleneck else 1

  class Block(nn.Module):
    def __init__(self, inp, planes, stride):
      super().__init__()
      out = planes * expansion
      if bottleneck:
        self.conv1, self.bn1 = nn.Conv2d(inp, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3, self.bn3 = nn.Conv2d(planes, out, 1, bias=False), nn.BatchNorm2d(out)
      else:
        self.conv1 = nn.Conv2d(inp, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False), nn.BatchNorm2d(planes)
      self.downsample = None
      if stride != 1 or inp != out:
        self.downsample = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False),
                                        nn.BatchNorm2d(out))

    def forward(self, x):
      y = self.bn1(self.conv1(x)).relu()
      y = self.bn2(self.conv2(y))
      if bottleneck:
        y = self.bn3(self.conv3(y.relu()))
      return (y + (x if self.downsample is None else self.downsample(x))).relu()

  class Net(nn.Module):
    def __init__(self):
      super().__init__()
      imagenet = name.endswith("_imagenet")
      self.conv1 = nn.Conv2d(3, width, 7 if imagenet else 3, 2 if imagenet else 1,
                             3 if imagenet else 1, bias=False)
      self.bn1 = nn.BatchNorm2d(width)
      self.maxpool = nn.MaxPool2d(3, 2, 1) if imagenet else nn.Identity()
      inp = width
      for i, blocks in enumerate(stages):
        layer = []
        for j in range(blocks):
          layer.append(Block(inp, width * 2**i, 2 if i > 0 and j == 0 else 1))
          inp = width * 2**i * expansion
        setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
      self.fc = nn.Linear(inp, classes)

    def forward(self, x):
      x = self.maxpool(self.bn1(self.conv1(x)).relu())
      for i in range(len(stages)):
        x = getattr(self, f"layer{i + 1}")(x)
      return self.fc(x.mean(dim=(2, 3)))

  return Net()


@pytest.mark.parametrize("name", ["resnet18_imagenet", "resnet50_imagenet", "resnet18"])
def test_pytorch_gives_tlflax_logits_both_ways(tmp_path, name):
  """Import: a PyTorch module's state dict through safetensors into tlflax; export: tlflax's
  weights back into PyTorch (strict load). Same logits both ways."""
  torch = pytest.importorskip("torch")
  safetensors_torch = pytest.importorskip("safetensors.torch")
  net = _torch_resnet(name, 8, 12).eval()
  with torch.no_grad():  # random BatchNorm statistics, so eval mode does something
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.normal_(0, 0.1)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.1)
  file = tmp_path / "torch.safetensors"
  safetensors_torch.save_file(net.state_dict(), str(file))
  size = 64 if name.endswith("_imagenet") else 32
  images = np.random.default_rng(3).normal(0, 1, (2, size, size, 3)).astype(np.float32)
  with torch.no_grad():
    want = net(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  model, variables, _ = tlflax.load(str(file))
  got = np.asarray(model.apply(variables, images, train=False))
  rel = np.linalg.norm(got - want) / np.linalg.norm(want)
  print(f"{name}: PyTorch -> tlflax logits relative error {rel:.2e}")
  assert rel < 1e-4
  out = tmp_path / "back.safetensors"
  weights.save(jax.device_get(variables), str(out), {})
  back = _torch_resnet(name, 8, 12).eval()
  back.load_state_dict(safetensors_torch.load_file(str(out)), strict=True)
  with torch.no_grad():
    again = back(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  np.testing.assert_array_equal(again, want)


def test_right_keys_with_wrong_shapes_are_refused_before_anything_is_built(tmp_path):
  """Every array's shape is checked against the architecture its keys name: a 1x1 kernel where
  the model has 3x3, a wide_resnet50_2 (bottlenecks twice as wide, resnet50's keys), a layer of
  another width; a DataParallel state dict is refused with its fix. A head of another number of
  classes is legitimate."""
  base = random_state("resnet18_imagenet", classes=1000)
  wide = random_state("resnet50_imagenet", classes=1000)
  for key in [k for k in wide if re.match(r"layer\d\.\d\.(conv[12]|bn[12])\.", k)]:
    v = wide[key]
    inner = key.split(".")[2]
    if v.ndim == 4:  # the inner convolutions: outputs doubled, and conv2's inputs too
      shape = (2 * v.shape[0], v.shape[1] * (2 if inner == "conv2" else 1)) + v.shape[2:]
      wide[key] = np.zeros(shape, np.float32)
    elif v.ndim == 1:
      wide[key] = np.ones(2 * v.shape[0], np.float32)
  cases = {
      "kernel": ({**base, "layer2.0.conv1.weight": np.zeros((16, 8, 1, 1), np.float32)},
                 ("layer2.0.conv1.weight has shape (16, 8, 1, 1), but resnet18_imagenet of "
                  "width 8 has (16, 8, 3, 3)")),
      "wide": (wide, ("layer1.0.conv1.weight has shape (16, 8, 1, 1), but resnet50_imagenet "
                      "of width 8 has (8, 8, 1, 1)")),
      "width": ({**base, "layer4.1.bn2.weight": np.ones(100, np.float32)},
                "layer4.1.bn2.weight has shape (100,), but resnet18_imagenet of width 8 has (64,)"),
      "dataparallel": ({f"module.{k}": v for k, v in base.items()},
                       "saved from torch.nn.DataParallel (its keys start with 'module.')"),
  }
  for name, (state, expected) in cases.items():
    file = tmp_path / f"{name}.safetensors"
    safetensors_numpy.save_file(state, str(file))
    with pytest.raises(UserError) as e:
      tlflax.load(str(file))
    assert expected in str(e.value) and "\n" not in str(e.value), (name, str(e.value))
    if name != "dataparallel":
      assert "tlflax imports torchvision / timm resnet18, resnet34" in str(e.value)
  other_head = tmp_path / "head.safetensors"
  safetensors_numpy.save_file(random_state("resnet18_imagenet", classes=37), str(other_head))
  _, variables, info = tlflax.load(str(other_head))
  assert info["num_classes"] == 37 and variables["params"]["head"]["kernel"].shape == (64, 37)
  out = tmp_path / "out.safetensors"  # python -m tlflax.use.convert: exit 2, one line, no file
  result = subprocess.run([sys.executable, "-m", "tlflax.use.convert",
                           f"--in={tmp_path / 'wide.safetensors'}", f"--out={out}"],
                          capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, check=False)
  assert result.returncode == 2 and not out.exists(), result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      next(x for x in result.stderr.splitlines() if x.startswith("tlflax.use.convert: error:"))]


HUB_CHECK = """
import json, sys
from tlflax.errors import UserError
import tlflax
out = {}
for name in sys.argv[1:]:
  try:
    model, variables, info = tlflax.load(name)
    out[name] = {"image_size": info["image_size"], "mean": info["mean"], "source": info["source"]}
  except UserError as e:
    out[name] = {"error": str(e)}
print(json.dumps(out))
"""


def test_hub_weights_use_the_repos_own_config_and_keep_their_revision(imagenet_file, tmp_path):
  """hf://ORG/NAME[@REV] reads config.json of the same revision (timm's pretrained_cfg: mean,
  std, input size, class count, architecture) and refuses one that contradicts the weights or is
  not JSON, in one line; offline without a cache, the line names the command that fills it."""
  rev = "0123456789abcdef0123456789abcdef01234567"
  good = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {
      "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "input_size": [3, 160, 160]}}
  env = {}
  for repo, config in (("org/good", good), ("org/classes", {**good, "num_classes": 10}),
                       ("org/arch", {**good, "architecture": "resnet50"}), ("org/broken", None)):
    env = _hub_cache(tmp_path / "hf", repo, imagenet_file, config or {})
    if config is None:
      base = tmp_path / "hf" / "hub" / f"models--{repo.replace('/', '--')}"
      (base / "snapshots" / rev / "config.json").write_text("{not json")
  names = ["hf://org/good", f"hf://org/good@{rev}", "hf://org/classes", "hf://org/arch",
           "hf://org/broken", "hf://org/absent@v2"]
  result = subprocess.run([sys.executable, "-c", HUB_CHECK, *names], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  got = json.loads(result.stdout.strip().splitlines()[-1])
  for name in names[:2]:
    assert got[name] == {"image_size": 160, "mean": [0.5, 0.4, 0.3], "source": name}
  assert "its config.json says 10 classes, its head has 1000" in got["hf://org/classes"]["error"]
  assert "its config.json says 'resnet50', its weights are resnet18_imagenet" in \
      got["hf://org/arch"]["error"]
  assert "is not a valid config.json (invalid JSON" in got["hf://org/broken"]["error"]
  absent = got["hf://org/absent@v2"]["error"]
  assert absent.startswith("cannot get model.safetensors of hf://org/absent@v2 (")
  assert absent.endswith("On a machine with network, `hf download org/absent model.safetensors "
                         "config.json --revision v2` fills the cache, after which "
                         "HF_HUB_OFFLINE=1 works; or pass the file's path")
  assert all("\n" not in v.get("error", "") for v in got.values())
