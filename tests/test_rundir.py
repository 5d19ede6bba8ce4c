"""Run-folder rules: which config a folder belongs to, refusal, clean-up, a transfer's source."""

import json
import os

import pytest

from tlflax.config import base_config
from tlflax.errors import UserError
from tlflax.io import rundir
from tlflax.train import source as source_lib


def _config(**source):
  config = base_config()
  config.source.update(source)
  return config


def _trained(run_dir):
  os.makedirs(os.path.join(run_dir, "checkpoints", "4"))


def test_a_changed_config_is_refused_once_something_was_trained(tmp_path):
  run_dir = str(tmp_path / "pretrain")
  created = rundir.open_run(run_dir, "pretrain", _config(epochs=1))
  assert created == [run_dir]
  # Nothing trained yet: another config replaces the record.
  assert rundir.open_run(run_dir, "pretrain", _config(epochs=2)) == []
  assert rundir.read_json(os.path.join(run_dir, "config.json"))["source"]["epochs"] == 2
  _trained(run_dir)
  before = sorted(os.listdir(run_dir))
  with pytest.raises(UserError, match=r"another config \(source.epochs: 2 -> 3\)"):
    rundir.open_run(run_dir, "pretrain", _config(epochs=3))
  # The target block does not decide a pretraining: no refusal, nothing rewritten.
  other_target = _config(epochs=2)
  other_target.target.epochs = 7
  rundir.open_run(run_dir, "pretrain", other_target)
  assert sorted(os.listdir(run_dir)) == before


def test_a_transfer_run_depends_on_its_source_config(tmp_path):
  workdir = str(tmp_path)
  first = source_lib.resolve(_config(epochs=1), workdir)
  assert first.run == os.path.join(workdir, "pretrain") and first.pretrain.seed == 0
  assert first == source_lib.resolve(_config(epochs=1), workdir)  # a stable hash
  second = source_lib.resolve(_config(epochs=3, learning_rate=0.2), workdir)
  assert second.config_sha256 != first.config_sha256
  run_dir = os.path.join(workdir, "transfer")
  rundir.open_run(run_dir, "transfer", _config(epochs=1), first.record())
  _trained(run_dir)
  with pytest.raises(UserError, match="init.config_sha256.*the run it starts from has another"):
    rundir.open_run(run_dir, "transfer", _config(epochs=3, learning_rate=0.2), second.record())
  # The hash is the one of the pretraining's own config.json.
  pre = os.path.join(workdir, "pretrain")
  rundir.open_run(pre, "pretrain", _config(epochs=1))
  record = rundir.read_json(os.path.join(pre, "config.json"))
  assert rundir.config_hash(record, "pretrain") == first.config_sha256


def test_init_from_an_unfinished_run_needs_an_explicit_step(tmp_path):
  source = tmp_path / "src"
  rundir.open_run(str(source), "pretrain", _config(epochs=1))
  (source / "checkpoints" / "8").mkdir(parents=True)
  (source / "checkpoints" / "16").mkdir()
  config = _config(epochs=1)
  config.transfer.init_from = str(source)
  with pytest.raises(UserError, match=rf"has not finished.*init_from={source}/checkpoints/16"):
    source_lib.resolve(config, str(tmp_path))
  config.transfer.init_from = str(source / "checkpoints" / "8")
  named = source_lib.resolve(config, str(tmp_path))
  assert named.run == str(source) and named.pretrain is None
  assert named.config_sha256 == rundir.config_hash(
      rundir.read_json(str(source / "config.json")), "pretrain")
  (source / "summary.json").write_text(json.dumps({"final": {}}))
  config.transfer.init_from = str(source)
  assert source_lib.resolve(config, str(tmp_path)) == named


def test_a_failed_start_leaves_no_folder_but_a_trained_one_is_kept(tmp_path):
  run_dir = str(tmp_path / "scratch" / "seed_0")
  created = rundir.open_run(run_dir, "scratch", base_config())
  assert created == [run_dir, str(tmp_path / "scratch")]
  os.makedirs(os.path.join(run_dir, "checkpoints", "1.orbax-checkpoint-tmp"))  # no finished step
  rundir.discard_untrained(created)
  assert os.listdir(tmp_path) == []
  created = rundir.open_run(run_dir, "scratch", base_config())
  _trained(run_dir)
  rundir.discard_untrained(created)
  assert sorted(os.listdir(run_dir)) == ["checkpoints", "config.json"]


def test_an_unwritable_workdir_is_a_user_error(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(UserError, match=f"cannot write run folder {blocker}/scratch"):
    rundir.open_run(str(blocker / "scratch"), "scratch", base_config())


def test_a_run_folder_from_before_model_padding_padded_same(tmp_path):
  """Runs made before `model.padding` existed used XLA's SAME padding: today's default ('torch')
  is another result, refused with the flag that resumes the old run; 'same' reuses it."""
  run_dir = str(tmp_path / "scratch")
  rundir.open_run(run_dir, "scratch", _config())
  path = os.path.join(run_dir, "config.json")
  old = rundir.read_json(path)
  del old["model"]["padding"]
  rundir.write_json(path, old)
  _trained(run_dir)
  with pytest.raises(UserError, match=r"model.padding: 'same' -> 'torch'.*--config.model.padding"
                                      r"=same resumes or reuses it"):
    rundir.open_run(run_dir, "scratch", _config())
  same = _config()
  same.model.padding = "same"
  assert rundir.open_run(run_dir, "scratch", same) == []
