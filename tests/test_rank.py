"""--mode=rank and its scores: LogME against the evidence maximised directly, LEEP and NCE against
hand-computed values, scores that order informative features above uninformative ones, the
freeze suggestion's rule, and a ranked workdir checked against the runs fine-tuned in it."""

import json
import math

import numpy as np
import pytest
import scipy.optimize
from conftest import run_cli

from tlflax.errors import UserError
from tlflax.use import rank, ranking, scores


def _direct_evidence(f, y, log_alpha, log_beta):
  """log N(y | 0, F F^T / alpha + I / beta) / N, with the N x N covariance itself."""
  n = len(y)
  cov = f @ f.T / math.exp(log_alpha) + np.eye(n) / math.exp(log_beta)
  _, logdet = np.linalg.slogdet(cov)
  return -0.5 * (n * math.log(2 * math.pi) + logdet + y @ np.linalg.solve(cov, y)) / n


def _direct_max(f, y):
  """The evidence maximised over a grid of alpha and beta (e^-12 .. e^12), then refined."""
  grid = np.linspace(-12, 12, 49)
  _, a, b = max((_direct_evidence(f, y, a, b), a, b) for a in grid for b in grid)
  best = scipy.optimize.minimize(lambda p: -_direct_evidence(f, y, *p), [a, b],
                                 method="Nelder-Mead",
                                 options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
  return -best.fun


@pytest.mark.parametrize("n,d", [(80, 6), (24, 40), (30, 30)])
def test_logme_equals_the_directly_maximised_evidence(n, d):
  rng = np.random.default_rng(n + d)
  labels = rng.integers(0, 3, n)
  f = rng.normal(size=(n, d)) + 0.8 * labels[:, None] * (np.arange(d) < 2)
  onehot = (labels[:, None] == np.arange(3)).astype(np.float64)
  mine = scores.logme_columns(scores.Spectrum(f), onehot)
  direct = [_direct_max(f, onehot[:, c]) for c in range(3)]
  np.testing.assert_allclose(mine, direct, rtol=0, atol=1e-6)
  assert scores.logme(f, labels) == pytest.approx(np.mean(direct), abs=1e-6)


def test_with_fewer_images_than_dimensions_the_zero_directions_count():
  """N < D: D - k directions have no variance. The reference implementation's evidence drops
  their (D - k) log(alpha) (thuml/LogME issue 23); the direct evidence, and tlflax, keep it."""
  rng = np.random.default_rng(3)
  n, d = 12, 30
  f, y = rng.normal(size=(n, d)), (np.arange(n) % 2).astype(np.float64)
  spectrum = scores.Spectrum(f)
  assert spectrum.k == n
  mine = scores.logme_columns(spectrum, y[:, None])[0]
  assert mine == pytest.approx(_direct_max(f, y), abs=1e-6)
  # The same maximisation without the zero directions' log(alpha) lands elsewhere.
  x2, residual = spectrum.project(y[:, None])

  def dropped(p):
    p = np.clip(p, -50, 50)
    alpha, beta = math.exp(p[0]), math.exp(p[1])
    full = scores._evidence(alpha, beta, n, d, spectrum.k, spectrum.sigma, x2[:, 0], residual[0])
    return -(full + (d - spectrum.k) * p[0] / 2) / n
  buggy = -scipy.optimize.minimize(dropped, [0.0, 0.0], method="Nelder-Mead").fun
  assert abs(buggy - mine) > 0.05


def test_the_residual_cannot_go_negative_where_float_subtraction_would():
  """Labels in the span of the features (N <= D): ||y||^2 - ||U^T y||^2 is 0 in exact arithmetic
  and cancels to a tiny negative number in floats; the least-squares residual is >= 0."""
  rng = np.random.default_rng(0)
  f = rng.normal(size=(20, 20)) * 1e3
  y = rng.integers(0, 2, 20).astype(np.float64)
  x2, residual = scores.Spectrum(f).project(y[:, None])
  assert residual[0] >= 0 and residual[0] < 1e-12 * (y @ y)
  assert (y @ y) - x2.sum() != residual[0]  # the subtraction's own rounding, which is avoided
  assert math.isfinite(scores.logme(f, y.astype(np.int64)))


def test_leep_on_a_hand_computed_example():
  """theta: the source's softmax over its 2 classes for 3 images; target labels 0, 1, 0.
  P(y, z) = sum of theta over images of class y / 3; P(z) = (1.7/3, 1.3/3);
  P(y=0 | z) = (15/17, 5/13), P(y=1 | z) = (2/17, 8/13); the expected empirical predictions are
  184/221, 114/221, 151/221."""
  theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
  labels = np.array([0, 1, 0])
  expected = (math.log(184) + math.log(114) + math.log(151)) / 3 - math.log(221)
  assert scores.leep(theta, labels) == pytest.approx(expected, abs=1e-12)
  # The arguments are not interchangeable: labels as probabilities are refused.
  with pytest.raises(ValueError, match="labels must be a 1-D integer array"):
    scores.leep(labels, theta)
  # A source class no image gives any mass: P(z) = 0, and its terms are 0, not NaN.
  padded = np.concatenate([theta, np.zeros((3, 1))], axis=1)
  assert scores.leep(padded, labels) == pytest.approx(expected, abs=1e-12)
  with pytest.raises(ValueError, match=r"labels must lie in 0..1"):
    scores.leep(theta, np.array([0, 2, 0]), num_classes=2)


def test_nce_on_a_hand_computed_example():
  """Hard predictions 0, 1, 0 against labels 0, 1, 1: P(z=0) = 2/3 with P(y | z=0) = (1/2, 1/2),
  P(z=1) = 1/3 with P(y=1 | z=1) = 1, so H(Y | Z) = 2/3 log 2."""
  theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
  assert scores.nce(theta, np.array([0, 1, 1])) == pytest.approx(-2 / 3 * math.log(2), abs=1e-12)
  assert scores.nce(theta, np.array([0, 1, 0])) == pytest.approx(0.0, abs=1e-12)


def test_informative_features_outscore_noise_and_permuted_labels():
  """Labels a linear function of 4 of 16 features plus noise: those features score above 16
  random ones, and above themselves with the labels permuted, by LogME and by the probe."""
  rng = np.random.default_rng(7)
  n, num_classes = 600, 4
  f = rng.normal(size=(n, 16))
  logits = f[:, :4] @ rng.normal(size=(4, num_classes)) + 0.3 * rng.normal(size=(n, num_classes))
  labels = np.argmax(logits, axis=1)
  noise = rng.normal(size=(n, 16))
  permuted = rng.permutation(labels)
  fit, held = rank.holdout(n, 0.25, 0)

  def both(feats, y):
    probe = scores.ridge_probe(feats[fit], y[fit], feats[held], y[held], num_classes)["accuracy"]
    return scores.logme(feats, y, num_classes), probe
  informative, random, shuffled = both(f, labels), both(noise, labels), both(f, permuted)
  assert informative[0] > random[0] + 0.01 and informative[0] > shuffled[0] + 0.01
  assert informative[1] > 0.65 and random[1] < 0.4 and shuffled[1] < 0.4


def test_one_class_is_refused_in_one_line():
  with pytest.raises(UserError, match="fewer than two classes"):
    scores.logme(np.ones((5, 3)), np.zeros(5, np.int64))


@pytest.mark.parametrize("source,floor,expected", [
    ({"stage1": 1.0, "stage2": 1.2, "stage3": 1.5, "stage4": 1.7}, None, "backbone"),
    ({"stage1": 1.0, "stage2": 1.6, "stage3": 1.5, "stage4": 1.4}, None, "stages:2"),
    # Better than random only in the first two stages: the best of those.
    ({"stage1": 1.1, "stage2": 1.3, "stage3": 1.5, "stage4": 1.6},
     {"stage1": 1.0, "stage2": 1.2, "stage3": 1.6, "stage4": 1.7}, "stages:2"),
    ({"stage1": 0.9, "stage2": 1.0}, {"stage1": 1.0, "stage2": 1.1}, "none"),
])
def test_the_freeze_suggestion_follows_the_stage_scores(source, floor, expected):
  assert rank.suggest(source, floor)["freeze"] == expected


def test_correlation_with_fine_tuning_uses_scipys_taus():
  results = [{"name": n, "logme": s, "leep": None, "nce": None, "probe": p}
             for n, s, p in (("a", 3.0, 0.9), ("b", 2.0, 0.5), ("c", 1.0, 0.7))]
  tuned = {"a": {"accuracy": 0.8}, "b": {"accuracy": 0.6}, "c": {"accuracy": 0.4}}
  corr = ranking.correlations(results, tuned)
  assert corr["logme"] == {"kendall_tau": 1.0, "weighted_tau": 1.0, "n": 3}
  assert corr["probe"]["kendall_tau"] == pytest.approx(1 / 3)
  assert corr["leep"] is None and corr["nce"] is None


TINY = ["--config=configs/smoke.py", "--config.model.name=resnet10", "--config.model.width=4",
        "--config.source.image_size=16", "--config.target.image_size=16",
        "--config.source.epochs=2", "--config.target.epochs=1",
        "--config.source.train_split=train[:512]", "--config.target.train_split=train[:512]",
        "--config.source.test_split=test[:100]", "--config.target.test_split=test[:100]",
        "--config.target.val_split=", "--config.seeds=(0,)"]


def test_a_workdir_is_ranked_and_checked_against_its_fine_tuned_runs(tmp_path):
  """A tiny compare (pretraining on synthetic10, scratch and full transfer on synthetic100), then
  --mode=rank with the default candidates (DIR/pretrain and random): every stage scored, the
  pretraining above random, the fine-tuned runs found and correlated; bad candidates are one line
  before any work."""
  work = tmp_path / "w"
  done = run_cli(["--mode=compare", f"--workdir={work}", *TINY], tmp_path)
  assert done.returncode == 0, done.stderr[-3000:]
  ranked = run_cli(["--mode=rank", f"--workdir={work}", *TINY], tmp_path)
  assert ranked.returncode == 0, ranked.stderr[-3000:]
  assert "[rank] 1/2" in ranked.stderr and "[rank] 2/2 random" in ranked.stderr
  out = json.loads((work / "rank" / "ranking.json").read_text())
  assert out["target"]["examples"] == 512 and out["target"]["probe_held_out"] == 102
  pre, floor = out["sources"]
  assert pre["name"] == str(work / "pretrain") and floor["name"] == "random"
  assert sorted(pre["stages"]) == ["stage1", "stage2", "stage3", "stage4"]
  assert pre["dims"] == {"stage1": 4, "stage2": 8, "stage3": 16, "stage4": 32}
  assert pre["logme"] == pre["stages"]["stage4"]["logme"]
  assert pre["leep"] is not None and pre["nce"] <= 0 and floor["leep"] is None
  assert pre["logme"] > floor["logme"]  # synthetic10's features help on synthetic100
  assert pre["suggest"]["freeze"] in ("backbone", "stages:1", "stages:2", "stages:3", "none")
  assert all(s["features_s"] > 0 and s["scores_s"] > 0 for s in out["sources"])
  tuned = out["fine_tuned"]
  assert sorted(tuned) == sorted([str(work / "pretrain"), "random"])
  assert list(tuned["random"]["experiments"]) == ["scratch"]
  assert list(tuned[str(work / "pretrain")]["experiments"]) == ["transfer_full"]
  assert out["correlation"]["logme"]["n"] == 2
  md = (work / "rank" / "ranking.md").read_text()
  assert "| 1 | `" in md and "Kendall tau" in md
  assert (work / "rank" / "ranking.png").read_bytes()[:4] == b"\x89PNG"

  # A candidate that is not there: one line, exit 2, the ranking on disk untouched.
  before = {p.name: p.read_bytes() for p in (work / "rank").iterdir()}
  bad = run_cli(["--mode=rank", f"--workdir={work}", *TINY,
                 "--config.rank.sources=('random', '/no/such/run')"], tmp_path)
  assert bad.returncode == 2, bad.stderr[-2000:]
  last = bad.stderr.strip().splitlines()[-1]
  assert last.startswith("tlflax: error: ") and "/no/such/run" in last, last
  assert {p.name: p.read_bytes() for p in (work / "rank").iterdir()} == before


@pytest.mark.parametrize("overrides,message", [
    ({"rank.sources": ("random", "random")}, "names random twice"),
    ({"rank.sources": ("random", "/no/such/run")}, "/no/such/run"),
    ({"rank.sources": ("TMP/vit.safetensors",)}, "is not a ResNet in torchvision / timm layout"),
    ({"target.train_split": "train[:1]"}, "fewer than two classes"),
    ({"rank.holdout": 1.0}, r"config.rank.holdout must lie strictly between 0 and 1 \(got 1.0\)"),
    ({"rank.batch_size": -8}, r"config.rank.batch_size must be >= 0 \(got -8;"),
    ({"rank.sources": ("random", "")}, "config.rank.sources must be a tuple"),
])
def test_bad_candidates_and_targets_are_refused_before_any_work(tmp_path, overrides, message):
  from safetensors.numpy import save_file

  from tlflax.config import files
  from tlflax.train import checks
  # A weights file of another architecture: no ResNet's tensor names.
  save_file({"blocks.0.weight": np.zeros((3, 3), np.float32)}, str(tmp_path / "vit.safetensors"))
  config = files.load("smoke")
  for key, value in overrides.items():
    value = tuple(v.replace("TMP", str(tmp_path)) for v in value) if key == "rank.sources" else value
    block, name = key.split(".")
    config[block][name] = value
  with pytest.raises(UserError, match=message):
    checks.validate(config)
    rank.run(config, str(tmp_path))
  assert not (tmp_path / "rank").exists() and not (tmp_path / "pretrain").exists()


def test_streamed_features_equal_those_from_the_devices(caplog):
  """Images too large for the device budget (data.pipeline='auto') are streamed from the host:
  the same features, in example order, with the last batch padded (21 images, batches of 8)."""
  from tlflax import config as config_lib
  from tlflax import parallel
  from tlflax.data import task as task_lib
  from tlflax.models import resnet
  rng = np.random.default_rng(0)
  split = task_lib.Split(rng.integers(0, 256, (21, 8, 8, 3), dtype=np.uint8),
                         rng.integers(0, 10, 21).astype(np.int32))
  model_cfg = config_lib.model_config(name="resnet10", width=4, dtype="float32")
  candidate = rank.Candidate("random", resnet.from_config(model_cfg, 10),
                             resnet.init_variables(model_cfg, 10, (8, 8, 3), 0),
                             np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32), False, {})
  placement = parallel.Placement.create("shard_map")
  on_devices = rank.features(candidate, split, 10, placement, 8)
  tiny_budget = config_lib.data_config(device_budget_gb=1e-6)  # ~1 KiB: 4 KiB of images stream
  with caplog.at_level("INFO"):
    streamed = rank.features(candidate, split, 10, placement, 8, tiny_budget)
  assert "streaming batches from host memory" in caplog.text
  assert sorted(streamed) == ["probs", "stage1", "stage2", "stage3", "stage4"]
  for key, value in on_devices.items():
    assert value.shape[0] == 21 and streamed[key].shape == value.shape
    np.testing.assert_allclose(streamed[key], value, atol=1e-6)
  assert np.ptp(on_devices["stage4"], axis=0).max() > 0  # the images differ, so do the rows


def test_fine_tuned_runs_count_each_seed_once_as_the_report_does(tmp_path):
  """A study's scratch/seed_0 and a single-mode DIR/scratch of the same seed are one seed (the
  study's wins, as in the report); a run on other target data, or unfinished, is not counted."""
  from tlflax.config import files
  from tlflax.io import rundir
  config = files.load("smoke")
  target = {k: config.target[k] for k in ranking.DATA_KEYS}

  def run(folder, seed, accuracy, study=None, finished=True, **changed):
    path = tmp_path / folder
    path.mkdir(parents=True, exist_ok=True)
    record = {"mode": "scratch", "seed": seed, "target": {**target, **changed}}
    if study:
      record["study"] = {"experiment": study}
    rundir.write_json(str(path / "config.json"), record)
    if finished:
      rundir.write_json(str(path / "summary.json"), {"final": {"test_accuracy": accuracy}})

  run("scratch/seed_0", 0, 0.25, study="scratch")
  run("scratch/seed_1", 1, 0.75, study="scratch")
  run("scratch", 0, 0.5)  # single-mode, seed 0 again
  run("scratch/seed_2", 2, 0.9, study="scratch", finished=False)
  run("other/seed_3", 3, 0.1, study="scratch", image_size=64)
  candidates = [rank.Candidate("random", None, {}, None, None, False, {})]
  tuned = ranking.fine_tuned(str(tmp_path), candidates, config)
  assert tuned == {"random": {"accuracy": 0.5, "experiments": {"scratch": [0.25, 0.75]}}}
