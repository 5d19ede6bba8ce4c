"""Progress display (bar on a terminal, log lines otherwise) and the metrics files."""

import io
import logging

from tlflax.train.monitor import MetricsWriter, Progress, read_metrics


class FakeTerminal(io.StringIO):
  def isatty(self):
    return True


def test_terminal_gets_a_bar_with_loss_and_images_per_second():
  stream = FakeTerminal()
  progress = Progress("scratch", epochs=2, steps_per_epoch=10, batch_size=8, log_every_steps=5,
                      stream=stream)
  progress.start_epoch(0)
  updates = [i for i in range(10) if progress.wants_update(i)]
  for i in updates:
    progress.update(i + 1, 2.5)
  progress.end_epoch(2.5)
  text = stream.getvalue()
  assert updates == [4, 9]
  assert "scratch epoch 1/2" in text and "10/10" in text
  assert "loss=2.5000" in text and "img_s=" in text


def test_plain_stream_gets_log_lines_with_eta(caplog):
  stream = io.StringIO()
  progress = Progress("pretrain", epochs=3, steps_per_epoch=4, batch_size=8, log_every_steps=2,
                      stream=stream)
  with caplog.at_level(logging.INFO):
    progress.start_epoch(1)
    progress.update(2, 1.25)
  assert stream.getvalue() == ""  # no bar escape codes in logs
  line = caplog.records[-1].getMessage()
  assert line.startswith("[pretrain] epoch 2/3 step 2/4 loss 1.2500") and " eta 0:00:" in line


def test_eta_counts_training_steps_only(caplog, monkeypatch):
  """Compiling for 100 s before the first step, then 1 s a step: the ETA is the steps left at
  1 s each, not 100 s a step; a resumed phase (starting at epoch 2 of 3) counts its own steps."""
  clock = [0.0]
  monkeypatch.setattr("tlflax.train.monitor.time.perf_counter", lambda: clock[0])
  progress = Progress("scratch", epochs=3, steps_per_epoch=4, batch_size=8, log_every_steps=2,
                      stream=io.StringIO())
  with caplog.at_level(logging.INFO):
    clock[0] = 100.0
    progress.start_epoch(1)
    clock[0] = 102.0
    progress.update(2, 1.0)
    assert caplog.records[-1].getMessage().endswith("eta 0:00:06")  # 2 + 4 steps left
    clock[0] = 104.0
    progress.update(4, 1.0)
    progress.end_epoch(1.0)
    clock[0] = 150.0  # evaluation and checkpoint
    progress.start_epoch(2)
    clock[0] = 154.0  # now 2 s a step
    progress.update(2, 1.0)
    assert caplog.records[-1].getMessage().endswith("eta 0:00:02")  # 2 steps x 8 s / 6 steps


def test_metrics_round_trip(tmp_path):
  writer = MetricsWriter(str(tmp_path))
  writer.write({"epoch": 1, "step": 10, "test_accuracy": 0.5})
  writer.write({"epoch": 2, "step": 20, "test_accuracy": 0.75})
  writer.close()
  assert [r["test_accuracy"] for r in read_metrics(str(tmp_path))] == [0.5, 0.75]
  assert list(tmp_path.glob("events.out.tfevents.*"))
  assert read_metrics(str(tmp_path / "absent")) == []


def test_events_are_kept_apart_and_a_resume_rewrites_tensorboard(tmp_path):
  from test_main import _event_scalars

  from tlflax.train import monitor
  writer = MetricsWriter(str(tmp_path))
  for epoch in (1, 2, 3):
    writer.write({"epoch": epoch, "step": 10 * epoch, "test_loss": 1.0 / epoch})
  writer.close()
  monitor.write_event(str(tmp_path), {"event": "interrupted", "step": 35, "epoch": 4})
  assert [r["epoch"] for r in read_metrics(str(tmp_path))] == [1, 2, 3]
  assert monitor.read_events(str(tmp_path)) == [{"event": "interrupted", "step": 35, "epoch": 4}]
  # Resumed from the checkpoint of epoch 2: epoch 3 is rolled back and trained again.
  kept = monitor.truncate_metrics(str(tmp_path), 2)
  assert [r["epoch"] for r in kept] == [1, 2]
  writer = MetricsWriter(str(tmp_path), history=kept)
  writer.write({"epoch": 3, "step": 30, "test_loss": 0.25})
  writer.close()
  assert [r["test_loss"] for r in read_metrics(str(tmp_path))] == [1.0, 0.5, 0.25]
  assert len(monitor.read_events(str(tmp_path))) == 1
  assert [(s, round(v, 4)) for s, v in _event_scalars(tmp_path, "test_loss")] == [
      (10, 1.0), (20, 0.5), (30, 0.25)]


def _summary_tags(run_dir) -> dict:
  """{tag: plugin data bytes} of every summary value in a run's event files."""
  import struct

  from tensorboardX.proto import event_pb2
  out = {}
  for path in sorted(run_dir.glob("events.out.tfevents.*")):
    raw, offset = path.read_bytes(), 0
    while offset < len(raw):
      (length,) = struct.unpack("<Q", raw[offset:offset + 8])
      event = event_pb2.Event.FromString(raw[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
      for v in event.summary.value:
        out[v.tag] = v.metadata.plugin_data.content
  return out


def test_training_windows_and_hparams_reach_tensorboard_and_a_resume_cuts_them(tmp_path):
  from test_main import _event_scalars

  from tlflax.train import monitor
  hparams = {"target.learning_rate": 0.1, "model.name": "resnet18", "transfer.lr_mult": []}
  writer = MetricsWriter(str(tmp_path), hparams=hparams)
  for step in (8, 16, 24, 32):
    writer.write_step({"step": step, "train_loss": 5 - step / 8, "learning_rate": 0.1,
                       "img_per_s": 100.0})
  writer.close()
  assert _event_scalars(tmp_path, "step/train_loss") == [(8, 4.0), (16, 3.0), (24, 2.0), (32, 1.0)]
  tags = _summary_tags(tmp_path)
  start = tags["_hparams_/session_start_info"]
  assert b"target.learning_rate" in start and b"resnet18" in start
  assert b"test_accuracy" in tags["_hparams_/experiment"]  # the metric the HParams view shows
  # Resumed from the checkpoint of step 16: the windows after it are rolled back.
  writer = MetricsWriter(str(tmp_path), history=[], resumed_step=16, hparams=hparams)
  writer.write_step({"step": 24, "train_loss": 2.5, "learning_rate": 0.1, "img_per_s": 90.0})
  writer.close()
  assert [r["step"] for r in monitor.read_steps(str(tmp_path))] == [8, 16, 24]
  assert _event_scalars(tmp_path, "step/train_loss") == [(8, 4.0), (16, 3.0), (24, 2.5)]
