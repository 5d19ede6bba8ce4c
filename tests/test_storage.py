"""Workdirs on object storage: a gs:// workdir against a local GCS emulator (the `gcs` fixture):
files, the rules that refuse stale folders, SIGTERM and an exact resume, the report, two
processes; s3:// refused with the reason."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from conftest import JAX_CACHE, REPO, SECRET, SECRET_ENV, TINY_ARGS, TINY_STEPS, run_cli

EXACT = ("epoch", "step", "train_loss", "train_accuracy", "test_loss", "test_accuracy")


def _exact(lines: str) -> list[dict]:
  return [{k: r[k] for k in EXACT} for r in map(json.loads, lines.splitlines()) if "event" not in r]


def test_storage_functions_on_the_emulated_bucket(gcs):
  """What tlflax needs of a store, through storage.py (etils.epath + gcsfs), checked against the
  objects the emulator holds."""
  code = textwrap.dedent("""
      from tlflax import storage
      d = "gs://bkt/unit"
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
      """)
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **gcs["env"]}, timeout=120, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.strip() == "['up']"
  assert (gcs["root"] / "unit" / "up" / "f.txt").read_text() == "up"
  assert not any(p.is_file() for p in (gcs["root"] / "unit").rglob("b/*"))  # no object left


def _start_and_signal(args, env, log, when: str):
  """Starts tlflax, sends SIGTERM once its log shows `when`; returns (exit code, log text)."""
  with open(log, "w") as err:
    proc = subprocess.Popen([sys.executable, "-m", "tlflax.main", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 300
    while when not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
      time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    try:
      proc.wait(timeout=300)
    finally:
      proc.kill()
  return proc.returncode, log.read_text()


def test_a_gs_workdir_is_interrupted_resumes_exactly_and_reports(gcs, tiny_scratch, tmp_path):
  """TINY_ARGS with --workdir=gs://bkt/run: SIGTERM in epoch 2, the resume ends with the very
  metrics of the local uninterrupted run (tiny_scratch); a changed config is refused there as
  locally; --mode=report reads the bucket and writes the report into it."""
  workdir, root = "gs://bkt/run", gcs["root"] / "run"
  env = {**os.environ, "TLFLAX_JAX_CACHE": JAX_CACHE, **gcs["env"], **SECRET_ENV}
  code, stderr = _start_and_signal(TINY_ARGS + [f"--workdir={workdir}"], env,
                                   tmp_path / "cut.log", f"epoch 2/2 step 4/{TINY_STEPS}")
  assert code == 143, stderr[-3000:]
  assert f"saved {workdir}/scratch/checkpoints/" in stderr
  run = root / "scratch"
  assert (run / "config.json").exists() and not (run / "summary.json").exists()
  events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
  assert events[-1]["event"] == "interrupted"

  result = run_cli(TINY_ARGS + [f"--workdir={workdir}"], tmp_path, env={**gcs["env"],
                                                                        **SECRET_ENV})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resuming from gs://bkt/run/scratch/checkpoints/" in result.stderr
  local = tiny_scratch[0] / "scratch"
  assert _exact((run / "metrics.jsonl").read_text()) == _exact(
      (local / "metrics.jsonl").read_text())
  summary = json.loads((run / "summary.json").read_text())
  assert summary["resumed_from_step"] > TINY_STEPS
  assert len(list(run.glob("events.out.tfevents.*"))) == 1
  assert "64" in [p.name for p in (run / "checkpoints").iterdir()]

  changed = run_cli(TINY_ARGS + [f"--workdir={workdir}", "--config.target.learning_rate=0.2"],
                    tmp_path, env=gcs["env"])
  assert changed.returncode == 2
  assert f"{workdir}/scratch holds a run with another config (target.learning_rate" in \
      changed.stderr

  report = run_cli(["--mode=report", f"--workdir={workdir}"], tmp_path, env=gcs["env"])
  assert report.returncode == 0, report.stderr[-3000:]
  assert {"report.md", "summary.json", "loss.png", "accuracy.png", "time.png"} <= {
      p.name for p in (root / "report").iterdir()}
  assert (root / "report" / "loss.png").read_bytes()[:4] == b"\x89PNG"
  # A model in the bucket is evaluated into the bucket, with the run's last figures exactly.
  evaluated = run_cli(["--mode=evaluate", f"--model={workdir}/scratch", f"--workdir={workdir}"],
                      tmp_path, env=gcs["env"])
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  (folder,) = (root / "evaluate").iterdir()
  evaluation = json.loads((folder / "evaluation.json").read_text())
  last = _exact((run / "metrics.jsonl").read_text())[-1]
  assert (evaluation["loss"], evaluation["accuracy"]) == (last["test_loss"], last["test_accuracy"])
  for path in root.rglob("*"):  # nothing of the environment lands in the bucket
    assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_two_processes_write_one_run_to_the_bucket(gcs, tmp_path):
  """A TPU-style launch (2 processes, 2 CPU devices each, gloo) with a gs:// workdir: process 0
  writes the files, both write the checkpoint."""
  from test_parallel import TINY, _launch
  runs = _launch(TINY + ["--workdir=gs://bkt/two", "--config.target.epochs=1"], tmp_path,
                 processes=2, devices=2, env=gcs["env"])
  assert [c for c, _ in runs] == [0, 0], runs[0][1][-3000:] + runs[1][1][-3000:]
  run = gcs["root"] / "two" / "scratch"
  summary = json.loads((run / "summary.json").read_text())
  assert (summary["devices"], summary["processes"]) == (4, 2)
  assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
  steps = [p.name for p in (run / "checkpoints").iterdir()]
  assert steps and all((run / "checkpoints" / s / "commit_success.txt").exists() for s in steps)


def test_an_s3_workdir_is_one_line_naming_why(tmp_path):
  result = run_cli(["--mode=scratch", "--config=smoke", "--workdir=s3://bkt/w"], tmp_path)
  assert result.returncode == 2
  line = result.stderr.strip().splitlines()[-1]
  assert line.startswith("tlflax: error: --workdir=s3://bkt/w: ") and "gs://" in line
