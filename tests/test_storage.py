"""Workdirs on object storage, each test on gs:// (a local GCS emulator, the `gcs` fixture) and on
s3:// (moto's S3 server, the `s3` fixture): files, the rules that refuse stale folders, SIGTERM
and an exact resume, the report, evaluate, two processes, nothing secret in the bucket."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO, SECRET, SECRET_ENV, TINY_ARGS, TINY_STEPS, run_cli, start_and_signal

STORES = pytest.mark.parametrize("store", ["gs", "s3"])
EXACT = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _exact(lines: str) -> list[dict]:
  return [{k: r[k] for k in EXACT} for r in map(json.loads, lines.splitlines()) if "event" not in r]


def _bucket(store: str, request) -> dict:
  """The emulator of `store` ("gs" or "s3"): its fixture, with `scheme` ("gs://")."""
  return {**request.getfixturevalue({"gs": "gcs", "s3": "s3"}[store]), "scheme": f"{store}://"}


@STORES
def test_storage_functions_on_the_emulated_bucket(store, request):
  """What tlflax needs of a store, through storage.py (etils.epath + gcsfs or s3fs), checked
  against the objects the emulator holds."""
  bucket = _bucket(store, request)
  code = textwrap.dedent("""
      from tlflax.io import storage
      d = "STORE://bkt/unit"
      assert not storage.exists(d) and storage.listdir(d) == []
      storage.write_text(d + "/a/x.json", "{}")
      storage.append_text(d + "/a/log.jsonl", "1\\n")
      storage.append_text(d + "/a/log.jsonl", "2\\n")
      assert storage.read_text(d + "/a/log.jsonl") == "1\\n2\\n"
      assert storage.read_text(d + "/a/missing") is None
      assert storage.listdir(d + "/a") == ["log.jsonl", "x.json"] and storage.isdir(d + "/a")
      assert storage.glob(d + "/a", "*.json") == [d + "/a/x.json"]
      storage.move(d + "/a", d + "/b")
      assert storage.listdir(d) == ["b"] and storage.read_text(d + "/b/x.json") == "{}"
      storage.write_bytes(d + "/b/x.json", b"[1]")
      storage.remove(d + "/b/log.jsonl")
      assert storage.listdir(d + "/b") == ["x.json"]
      with storage.local_folder(d + "/up") as folder:
        open(folder + "/f.txt", "w").write("up")
      storage.rmtree(d + "/b")
      print(storage.listdir(d))
      """).replace("STORE", store)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **bucket["env"]}, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "['up']"
  assert bucket["keys"]("unit/") == ["unit/up/f.txt"]  # nothing left of a/ and b/
  assert bucket["read"]("unit/up/f.txt") == b"up"


@STORES
def test_a_bucket_workdir_is_interrupted_resumes_exactly_and_reports(store, request, tiny_scratch,
                                                                     tmp_path):
  """TINY_ARGS with --workdir=gs://bkt/run (s3://bkt/run): SIGTERM in epoch 2, the resume ends
  with the very metrics of the local uninterrupted run (tiny_scratch); a changed config is refused
  there as locally; --mode=report reads the bucket and writes the report into it; a model there
  is evaluated into it. No secret (the marker, and on s3 the secret key) lands in the bucket."""
  bucket = _bucket(store, request)
  workdir, keys, read = f"{store}://bkt/run", bucket["keys"], bucket["read"]
  code, stderr = start_and_signal(TINY_ARGS + [f"--workdir={workdir}"], tmp_path / "cut.log",
                                  f"epoch 2/2 step 4/{TINY_STEPS}",
                                  env={**bucket["env"], **SECRET_ENV})
  assert code == 143, stderr[-3000:]
  assert f"saved {workdir}/scratch/checkpoints/" in stderr
  assert "run/scratch/config.json" in keys("run/") and "run/scratch/summary.json" not in keys("run/")
  events = [json.loads(x) for x in read("run/scratch/metrics.jsonl").splitlines()]
  assert events[-1]["event"] == "interrupted"

  result = run_cli(TINY_ARGS + [f"--workdir={workdir}"], tmp_path, env={**bucket["env"],
                                                                        **SECRET_ENV})
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"resuming from {workdir}/scratch/checkpoints/" in result.stderr
  local = tiny_scratch[0] / "scratch"
  assert _exact(read("run/scratch/metrics.jsonl").decode()) == _exact(
      (local / "metrics.jsonl").read_text())
  summary = json.loads(read("run/scratch/summary.json"))
  assert summary["resumed_from_step"] > TINY_STEPS
  assert len(keys("run/scratch/events.out.tfevents.")) == 1
  checkpoint = keys("run/scratch/checkpoints/64/")
  assert "run/scratch/checkpoints/64/commit_success.txt" in checkpoint
  # The arrays are in the bucket (tensorstore's OCDBT data files), not in a local "s3:/" folder.
  assert any(k.startswith("run/scratch/checkpoints/64/params/") and "/d/" in k for k in checkpoint)
  assert not (REPO / f"{store}:").exists() and not (tmp_path / f"{store}:").exists()

  changed = run_cli(TINY_ARGS + [f"--workdir={workdir}", "--config.target.learning_rate=0.2"],
                    tmp_path, env=bucket["env"])
  assert changed.returncode == 2
  assert f"{workdir}/scratch holds a run with another config (target.learning_rate" in \
      changed.stderr

  report = run_cli(["--mode=report", f"--workdir={workdir}"], tmp_path, env=bucket["env"])
  assert report.returncode == 0, report.stderr[-3000:]
  assert {f"run/report/{n}" for n in ("report.md", "summary.json", "loss.png", "accuracy.png",
                                      "time.png")} <= set(keys("run/report/"))
  assert read("run/report/loss.png")[:4] == b"\x89PNG"
  # A model in the bucket is evaluated into the bucket, with the run's last figures exactly.
  evaluated = run_cli(["--mode=evaluate", f"--model={workdir}/scratch", f"--workdir={workdir}"],
                      tmp_path, env={**bucket["env"], **SECRET_ENV})
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  (evaluation_file,) = [k for k in keys("run/evaluate/") if k.endswith("/evaluation.json")]
  evaluation = json.loads(read(evaluation_file))
  last = _exact(read("run/scratch/metrics.jsonl").decode())[-1]
  assert (evaluation["loss"], evaluation["accuracy"]) == (last["test_loss"], last["test_accuracy"])
  for key in keys("run/"):  # nothing of the environment lands in the bucket
    assert SECRET.encode() not in read(key), key
  for out in (result, evaluated):
    assert SECRET not in out.stdout + out.stderr


@STORES
def test_two_processes_write_one_run_to_the_bucket(store, request, tmp_path):
  """A TPU-style launch (2 processes, 2 CPU devices each, gloo) with a bucket workdir: process 0
  writes the files, both write the checkpoint."""
  from test_parallel import TINY, _launch
  bucket = _bucket(store, request)
  runs = _launch(TINY + [f"--workdir={store}://bkt/two", "--config.target.epochs=1"], tmp_path,
                 processes=2, devices=2, env=bucket["env"])
  assert [c for c, _ in runs] == [0, 0], runs[0][1][-3000:] + runs[1][1][-3000:]
  summary = json.loads(bucket["read"]("two/scratch/summary.json"))
  assert (summary["devices"], summary["processes"]) == (4, 2)
  assert len(bucket["read"]("two/scratch/metrics.jsonl").splitlines()) == 1
  checkpoints = bucket["keys"]("two/scratch/checkpoints/")
  steps = {k.split("/")[3] for k in checkpoints if k.split("/")[3].isdigit()}
  assert steps and all(f"two/scratch/checkpoints/{s}/commit_success.txt" in checkpoints
                       for s in steps)


@STORES
def test_a_missing_bucket_is_one_line_and_is_not_created(store, request, tmp_path):
  """fsspec's mkdir would create the bucket (in the wrong region, or fail on permissions); tlflax
  refuses in one line and creates nothing."""
  bucket = _bucket(store, request)
  result = run_cli(["--mode=scratch", "--config=smoke", f"--workdir={store}://nobkt/w"], tmp_path,
                   env=bucket["env"])
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
      f"tlflax: error: --workdir={store}://nobkt/w: no bucket {store}://nobkt can be seen with "
      "these credentials and endpoint: create it first (tlflax creates no bucket), or check them")
  init = run_cli(["--mode=transfer", "--config=smoke", f"--workdir={tmp_path / 'w'}",
                  f"--config.transfer.init_from={store}://nobkt/pretrain"], tmp_path,
                 env=bucket["env"])
  assert init.returncode == 2 and init.stderr.strip().splitlines()[-1].startswith(
      f"tlflax: error: --config.transfer.init_from={store}://nobkt/pretrain: no bucket "), \
      init.stderr[-3000:]
  assert bucket["buckets"]() == ["bkt"]


def test_orbax_gets_tensorstore_s3_specs_and_every_other_path_what_it_had(monkeypatch):
  """s3.enable() (run in this process: it only adds s3:// to orbax's spec builder) gives
  tensorstore's s3 driver the bucket, the key prefix, and the endpoint and region of the standard
  AWS variables; local and gs:// specs are the ones orbax built before."""
  from orbax.checkpoint._src.serialization import tensorstore_utils as tsu

  from tlflax.io import s3
  paths = ["/tmp/run/checkpoints/3/params", "gs://bkt/run/checkpoints/3/params"]
  before = [tsu.build_kvstore_tspec(p, use_ocdbt=o) for p in paths for o in (True, False)]
  monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
  monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:10")  # S3's own wins
  monkeypatch.setenv("AWS_REGION", "eu-west-3")
  s3.enable()
  s3.enable()
  assert [tsu.build_kvstore_tspec(p, use_ocdbt=o) for p in paths for o in (True, False)] == before
  want = {"driver": "s3", "bucket": "bkt", "path": "run/checkpoints/3/params",
          "endpoint": "http://127.0.0.1:10", "aws_region": "eu-west-3"}
  assert tsu.build_kvstore_tspec("s3://bkt/run/x/../checkpoints/3/params/", use_ocdbt=False) == want
  ocdbt = tsu.build_kvstore_tspec("s3://bkt/run/checkpoints/3/params", use_ocdbt=True)
  assert (ocdbt["driver"], ocdbt["base"]) == ("ocdbt", want)
  monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
  monkeypatch.delenv("AWS_REGION")
  monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
  assert s3.kvstore("s3://bkt/a") == {"driver": "s3", "bucket": "bkt", "path": "a",
                                      "endpoint": "http://127.0.0.1:9"}


def test_an_orbax_whose_internals_moved_is_one_line_not_a_wrong_checkpoint():
  code = ("from orbax.checkpoint._src.serialization import tensorstore_utils as t\n"
          "del t._use_gcs_driver\n"
          "from tlflax.io import s3\n"
          "try:\n  s3.enable()\nexcept Exception as e:\n  print(type(e).__name__, e)\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
  import orbax.checkpoint
  assert result.stdout.strip() == (
      f"UserError orbax-checkpoint {orbax.checkpoint.__version__} cannot be taught to write s3:// "
      "checkpoints (tlflax knows 0.12): pip install 'orbax-checkpoint==0.12.8', or use gs:// or a "
      "mounted bucket"), result.stderr[-2000:]
