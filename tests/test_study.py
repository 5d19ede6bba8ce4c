"""The study end to end on the synthetic pair: arms, label budgets, validation, the report, reuse;
then --mode=transfer on the same workdir."""

import json
import textwrap

import pytest
from conftest import REPO, run_cli
from test_main import _check_run, _png_size


def _config_file(tmp_path, arms: str) -> str:
  """configs/smoke.py with the given arms, as a user's own config file would extend it."""
  path = tmp_path / f"study_{len(arms)}.py"
  path.write_text(textwrap.dedent(f"""
      from tlflax import config as config_lib

      def get_config():
        config = config_lib.shipped("smoke")
        config.arms = config_lib.arms_config({arms})
        return config
      """))
  return str(path)


def _summary(run_dir):
  return json.loads((run_dir / "summary.json").read_text())


def _records(run_dir):
  return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_a_study_with_two_arms_and_two_budgets_then_transfer_mode(tmp_path):
  """One pretraining; scratch and the 'full' arm at 5 examples per class and at all of them;
  then a 'probe' arm added: only its runs train. The report judges the claims and draws
  labels.png and time.png; --mode=transfer then reuses the pretraining; a stale one is refused."""
  work = tmp_path / "work"
  common = [f"--workdir={work}", "--config.seeds=(1,)", "--config.label_budgets=(5,0)",
            "--config.source.epochs=1", "--config.target.epochs=2",
            "--config.target.min_steps=21"]  # 5 per class: 7 steps/epoch -> 3 epochs
  one_arm = _config_file(tmp_path, '{"full": {}}')
  result = run_cli(["--mode=compare", f"--config={one_arm}"] + common, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pretraining on synthetic10 first" in result.stderr
  assert result.stderr.count("kept 100 leaves, re-initialised 2") == 2
  assert "7 steps/epoch: 3 epochs instead of 2, for min_steps=21" in result.stderr

  # Budgets and schedules: 5 per class of 100 classes, at least 21 steps.
  few, full = work / "transfer_full_5shot" / "seed_1", work / "transfer_full" / "seed_1"
  assert _summary(few)["train_examples"] == 500 and _summary(few)["epochs"] == 3
  assert [r["epoch"] for r in _records(few)] == [1, 2, 3]
  assert _summary(work / "scratch" / "seed_1")["train_examples"] == 2048
  # Validation: every record has val_accuracy; the summary's best is the best val epoch.
  records = _records(full)
  assert all(r["val_count"] == 512 for r in records)
  best = max(records, key=lambda r: (r["val_accuracy"], -r["epoch"]))
  assert _summary(full)["best"] == best and _summary(full)["selected_on"] == "val"
  # Normalisation: a transfer run uses its source's statistics; scratch its own.
  pre = _summary(work / "pretrain")
  assert (_summary(full)["mean"], _summary(full)["std"]) == (pre["mean"], pre["std"])
  assert _summary(work / "scratch" / "seed_1")["mean"] != pre["mean"]
  assert json.loads((full / "data_stats.json").read_text())["from"] == str(work / "pretrain")

  # Adding two arms, one a sweep point (a target key): the five finished runs are reused, only
  # the new arms' four train.
  probe_arms = ('{"full": {}, "probe": {"freeze": "backbone"}, '
                '"lr-1e-2": {"target": {"learning_rate": 0.01, "weight_decay": 0.0}}}')
  again = run_cli(["--mode=compare", f"--config={_config_file(tmp_path, probe_arms)}"] + common,
                  tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert again.stderr.count("reusing it") == 4  # the finished pretraining is reused silently
  assert again.stderr.count("cached linear probe (fixed features)") == 2
  assert (full / "metrics.jsonl").read_text() == "".join(
      json.dumps(r) + "\n" for r in records)
  # The sweep arm trains with its own target keys, scratch and the other arms with the study's.
  swept = work / "transfer_lr-1e-2" / "seed_1"
  swept_config = json.loads((swept / "config.json").read_text())
  assert (swept_config["target"]["learning_rate"], swept_config["target"]["weight_decay"]) == \
      (0.01, 0.0)
  assert json.loads((full / "config.json").read_text())["target"]["learning_rate"] == 0.05
  # The recorded learning rate of epoch 1 (warm-up of half an epoch, then cosine) scales with it.
  assert _records(swept)[0]["learning_rate"] == \
      pytest.approx(_records(full)[0]["learning_rate"] * 0.01 / 0.05)

  report = work / "report"
  for name in ("loss.png", "accuracy.png", "time.png", "labels.png"):
    assert _png_size(report / name)[0] > 300, name
  summary = json.loads((report / "summary.json").read_text())
  exps = summary["experiments"]
  assert sorted(exps) == ["scratch", "scratch_5shot", "transfer_full", "transfer_full_5shot",
                          "transfer_lr-1e-2", "transfer_lr-1e-2_5shot", "transfer_probe",
                          "transfer_probe_5shot"]
  assert {e["name"]: (e["budget"], e["seeds"]) for e in exps.values()}["transfer_probe_5shot"] \
      == (5, [1])
  assert all(e["selected_on"] == "val" for e in exps.values())
  assert exps["transfer_full"]["curves"]["test_accuracy"]["mean"] == [
      r["test_accuracy"] for r in records]
  # On the synthetic pair, features from synthetic10 help synthetic100 a lot within 2 epochs.
  assert (exps["transfer_full"]["best"]["test_accuracy"]["mean"]
          > 1.5 * exps["scratch"]["best"]["test_accuracy"]["mean"])
  assert summary["claims_on"] == {"scratch": "scratch", "transfer": "transfer_full"}
  md = (report / "report.md").read_text()
  verdicts = [line for line in md.splitlines() if line[:3] in ("1. ", "2. ", "3. ")]
  assert len(verdicts) == 3 and all(
      any(v in line for v in ("**holds**", "**does not hold**", "**cannot be judged**"))
      for line in verdicts)
  assert "`probe`: {\"freeze\": \"backbone\"}" in md
  assert "`lr-1e-2`: {\"target\": {\"learning_rate\": 0.01, \"weight_decay\": 0.0}}" in md
  _check_run(work / "pretrain", "pretrain", 0.1, 500, result.stderr, epochs=1)
  _check_run(work / "scratch" / "seed_1", "scratch", 0.01, 1000, result.stderr, epochs=2)

  # --mode=transfer on the same workdir reuses the pretraining and honours freeze.
  args = ["--mode=transfer", "--config=configs/smoke.py", f"--workdir={work}",
          "--config.source.epochs=1", "--config.target.epochs=1",
          "--config.transfer.freeze=stages:3"]
  result = run_cli(args, tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "no finished pretraining" not in result.stderr
  assert "freeze 'stages:3': 45 of 62 parameter arrays frozen, 15 BatchNorms" in result.stderr
  config = json.loads((work / "transfer" / "config.json").read_text())
  assert config["transfer"]["freeze"] == "stages:3"
  other = run_cli(args[:-1] + ["--config.transfer.freeze=backbone"], tmp_path)
  assert other.returncode == 2 and "holds a run with another config (transfer.freeze" in other.stderr
  # The transfer run records where it started: the pretraining, its config's hash, the step.
  from tlflax.io import rundir
  init = config["init"]
  pre_config = json.loads((work / "pretrain" / "config.json").read_text())
  assert init["run"] == str(work / "pretrain") and init["step"] == 2048 // 64
  assert init["checkpoint"] == f"{work}/pretrain/checkpoints/{init['step']}"
  assert init["config_sha256"] == rundir.config_hash(pre_config, "pretrain")
  assert _summary(work / "transfer")["init"] == init
  # A pretraining of another source config is never reused: refused before anything runs.
  before = sorted(str(p) for p in work.rglob("*"))
  stale = run_cli(args + ["--config.source.epochs=2", "--config.source.learning_rate=0.2"],
                  tmp_path)
  assert stale.returncode == 2
  assert f"{work}/pretrain holds a run with another config (source.epochs: 1 -> 2; " \
         "source.learning_rate: 0.05 -> 0.2)" in stale.stderr
  assert sorted(str(p) for p in work.rglob("*")) == before
  # The report redraws from disk, the single --mode=transfer run as an experiment of its own.
  (report / "loss.png").unlink()
  redraw = run_cli(["--mode=report", f"--workdir={work}"], tmp_path)
  assert redraw.returncode == 0 and (report / "loss.png").exists()
  assert "transfer" in json.loads((report / "summary.json").read_text())["experiments"]


def test_the_arms_config_lays_out_the_whole_study():
  import importlib.util

  from tlflax.study import experiments
  from tlflax.train import checks
  spec = importlib.util.spec_from_file_location("arms", REPO / "configs/cifar10_to_cifar100_arms.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  checks.validate(config)
  checks.arm_rules(config)
  names = [e.name for e in experiments.experiments(config)]
  assert len(names) == 20 and len(config.seeds) == 3
  assert names[:5] == ["scratch_5shot", "transfer_full_5shot", "transfer_gradual_5shot",
                       "transfer_probe_5shot", "transfer_stages2_5shot"]
  assert names[-5:] == ["scratch", "transfer_full", "transfer_gradual", "transfer_probe",
                        "transfer_stages2"]
  gradual = experiments.Experiment("transfer", "gradual", 25).config(config, 2)
  assert (gradual.seed, gradual.target.examples_per_class) == (2, 25)
  assert gradual.transfer.unfreeze == ((2, "stages:2"), (4, "none"))
  assert config.target.val_split == "" and config.target.train_split == "train"
  held_out = module.get_config("val")
  assert (held_out.target.train_split, held_out.target.val_split) == ("train[:90%]",
                                                                     "train[90%:]")


def test_the_sweep_config_gives_each_learning_rate_its_experiment_and_identity():
  from tlflax.config import cli
  from tlflax.io import rundir
  from tlflax.study import experiments
  from tlflax.train import checks
  for arg, seeds in (("", (0,)), (":smoke", (0,))):
    config = cli.load(f"lr_sweep{arg}")
    checks.validate(config)
    assert tuple(config.seeds) == seeds
    runs = {e.name: e.config(config, 0) for e in experiments.experiments(config)}
    assert sorted(runs) == ["scratch", "transfer_lr-1e-1", "transfer_lr-1e-2", "transfer_lr-3e-2"]
    rates = {name: run.target.learning_rate for name, run in runs.items()}
    assert rates == {"scratch": config.target.learning_rate, "transfer_lr-1e-1": 0.1,
                     "transfer_lr-1e-2": 0.01, "transfer_lr-3e-2": 0.03}
    # Each run folder's identity (what decides its result) follows its arm's target keys.
    hashes = {rundir.config_hash(rundir.record_of(e.mode, runs[e.name]), e.mode)
              for e in experiments.experiments(config)}
    assert len(hashes) == 4
  assert cli.load("lr_sweep").target.dataset == "cifar100"


@pytest.mark.parametrize("arm,expected", [
    ({"target": {"learning_rat": 0.1}}, ("config.arms.a.target.learning_rat does not exist: use "
     "keys of config.target (")),
    ({"target": {"learning_rate": -1.0}}, ("config.arms.a.target.learning_rate must be >= 0, got "
     "-1.0: set --config.arms.a.target.learning_rate")),
    ({"target": {"examples_per_class": 5}}, ("config.arms.a.target.examples_per_class: an arm may "
     "not change the target's data")),
    ({"target": {"epochs": "ten"}}, "config.arms.a.target.epochs='ten': "),
    ({"learning_rate": 0.1}, ("config.arms.a overrides transfer.learning_rate, which does not "
     "exist: use keys of config.transfer")),
])
def test_an_arm_overriding_a_target_key_is_checked_like_the_target(arm, expected):
  from tlflax import config as config_lib
  from tlflax.errors import UserError
  from tlflax.train import checks
  config = config_lib.base_config()
  config.arms = config_lib.arms_config({"a": arm})
  with pytest.raises(UserError) as e:
    checks.validate(config)
  assert expected in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("arms, pretrained", [
    ({"full": {}, "other": {"init_from": "/runs/other"}}, True),
    ({"a": {"init_from": "/runs/a"}, "b": {"init_from": "/runs/b", "freeze": "stem"}}, False),
])
def test_each_arm_starts_from_its_own_source_and_pretrain_trains_only_when_used(
    monkeypatch, tmp_path, arms, pretrained):
  """An arm's `init_from` is the source its runs start from; DIR/pretrain is made ready (trained)
  only when an arm starts from it, and each source once, before any target run."""
  from tlflax import config as config_lib
  from tlflax.study import experiments
  calls = []
  monkeypatch.setattr(experiments.source_lib, "resolve",
                      lambda config, workdir: config.transfer.init_from or f"{workdir}/pretrain")
  monkeypatch.setattr(experiments.phase_lib, "prepare_source",
                      lambda source, workdir, placement: calls.append(("prepare", 0, source)))
  monkeypatch.setattr(experiments.phase_lib, "run_phase",
                      lambda mode, config, workdir, run_dir, source, placement, record:
                      calls.append((record["experiment"], config.seed, source)))
  monkeypatch.setattr(experiments, "write_report", lambda *args: "report")
  config = config_lib.shipped("smoke")
  config.arms = config_lib.arms_config(arms)
  config.seeds = (3, 4)
  assert experiments.run_compare(config, str(tmp_path)) == "report"
  want = {arm: spec.get("init_from") or f"{tmp_path}/pretrain" for arm, spec in arms.items()}
  prepared = [source for kind, _, source in calls if kind == "prepare"]
  assert prepared == list(dict.fromkeys(want.values()))  # each once, in arm order
  assert (f"{tmp_path}/pretrain" in prepared) == pretrained
  assert all(kind == "prepare" for kind, _, _ in calls[:len(prepared)])  # before any target run
  runs = calls[len(prepared):]
  assert len(runs) == 2 * (1 + len(arms))
  for name, seed, source in runs:
    assert seed in (3, 4)
    assert source == (None if name == "scratch" else want[name.removeprefix("transfer_")])
