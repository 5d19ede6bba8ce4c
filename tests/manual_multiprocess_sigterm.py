"""A check kept out of the suite for time (~2.5 min): two processes (gloo, 1 CPU device each)
train; SIGTERM goes to process 1 only; both must stop after the same step with exit 143, and
the resumed 2-process run must end with the metrics of an uninterrupted one.

  .venv/bin/python tests/manual_multiprocess_sigterm.py
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
ARGS = ["--mode=scratch", "--config=configs/smoke.py", "--config.model.name=resnet10",
        "--config.model.width=4", "--config.target.image_size=16", "--config.target.epochs=2",
        "--config.target.train_split=train[:2048]", "--config.target.test_split=test[:100]",
        "--config.target.batch_size=32", "--config.target.eval_batch_size=50",
        "--config.log_every_steps=1"]


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir, tag, signal_at=None):
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  extra = [f"--coordinator=127.0.0.1:{_port()}", "--num_processes=2"]
  logs = [os.path.join(workdir + f"_{tag}_{i}.log") for i in range(2)]
  procs = []
  for i, log in enumerate(logs):
    with open(log, "w") as out:
      procs.append(subprocess.Popen([PY, "-m", "tlflax.main", *ARGS, f"--workdir={workdir}",
                                     *extra, f"--process_id={i}"], cwd=REPO, env=env,
                                    stdout=out, stderr=subprocess.STDOUT))
  if signal_at:
    while procs[0].poll() is None:
      with open(logs[0]) as f:
        if signal_at in f.read():
          break
      time.sleep(0.02)
    procs[1].send_signal(signal.SIGTERM)  # a preemption notice to one host only
  codes = [p.wait(timeout=600) for p in procs]
  texts = []
  for log in logs:
    with open(log) as f:
      texts.append(f.read())
  return codes, texts


def _records(workdir):
  with open(os.path.join(workdir, "scratch", "metrics.jsonl")) as f:
    lines = [json.loads(x) for x in f]
  keys = ("epoch", "train_loss", "test_loss", "test_accuracy")
  return [[r[k] for k in keys] for r in lines if "event" not in r]


def main() -> None:
  root = "/tmp/tlflax_mp_sigterm"
  shutil.rmtree(root, ignore_errors=True)
  os.makedirs(root)
  ref, cut = f"{root}/ref", f"{root}/cut"
  codes, _ = _launch(ref, "ref")
  assert codes == [0, 0], codes
  codes, texts = _launch(cut, "cut", signal_at="epoch 1/2 step 10/64")
  assert codes == [143, 143], codes
  lines = [[x for x in t.splitlines() if x.startswith("tlflax:")] for t in texts]
  assert len(lines[0]) == 1 and lines[0] == lines[1], lines  # the same step on both
  print(lines[0][0])
  codes, texts = _launch(cut, "resume")
  assert codes == [0, 0], codes
  print(next(x for x in texts[0].splitlines() if "resuming" in x))
  assert _records(cut) == _records(ref), (_records(cut), _records(ref))
  print("resumed run equals the uninterrupted one:", _records(cut))


if __name__ == "__main__":
  main()
