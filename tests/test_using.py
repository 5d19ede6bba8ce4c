"""Using a trained model: evaluate (per-class figures, equal to the run's own evaluation),
predict on image files, export for serving (jax.export and a SavedModel), tlflax.predict."""

import csv
import json

import jax
import numpy as np
import pytest
from conftest import TINY_ARGS, run_cli
from PIL import Image

import tlflax
from tlflax.data import sources
from tlflax.data import task as task_lib
from tlflax.use import evaluate, export, prediction


def _records(run_dir):
  return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()
          if '"event"' not in x]


def test_evaluate_equals_the_runs_last_evaluation_and_adds_per_class_figures(tiny_scratch,
                                                                             tmp_path):
  workdir, _ = tiny_scratch
  run = workdir / "scratch"
  result = run_cli(["--mode=evaluate", "--config=smoke", f"--model={run}",
                    f"--workdir={tmp_path}"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  last = _records(run)[-1]
  out = tmp_path / "evaluate" / f"scratch_latest_step{last['step']}_synthetic100_test_200"
  ev = json.loads((out / "evaluation.json").read_text())
  # The training run's own eval step and padding: the same numbers, exactly.
  assert (ev["loss"], ev["accuracy"], ev["top5"], ev["count"]) == (
      last["test_loss"], last["test_accuracy"], last["test_top5"], last["test_count"])
  confusion = np.array(ev["confusion"])
  assert confusion.shape == (100, 100) and confusion.sum() == 200
  assert np.trace(confusion) / 200 == pytest.approx(ev["accuracy"])
  rows, cols = confusion.sum(1), confusion.sum(0)
  for r in ev["per_class"][:20]:
    c = r["class"]
    assert r["count"] == rows[c]
    assert r["recall"] == pytest.approx(confusion[c, c] / rows[c] if rows[c] else 0.0)
    assert r["precision"] == pytest.approx(confusion[c, c] / cols[c] if cols[c] else 0.0)
    p, q = r["precision"], r["recall"]
    assert r["f1"] == pytest.approx(2 * p * q / (p + q) if p + q else 0.0)
  assert ev["mean"] == json.loads((run / "data_stats.json").read_text())["mean"]
  md = (out / "evaluation.md").read_text()
  assert "The most confused pairs" in md and md.count("\n| 99 | 99 |") == 1
  with Image.open(out / "confusion.png") as image:
    assert image.size[0] > 1000  # 100 class names on each axis

  # The best checkpoint, on another split; then on the same split as the latest one, which it
  # leaves as it was (the checkpoint is part of the folder's name).
  best = json.loads((run / "summary.json").read_text())["best"]
  latest_json = (out / "evaluation.json").read_bytes()
  for split, folder in (("train[:64]", "train_64"), ("test[:200]", "test_200")):
    other = run_cli(["--mode=evaluate", "--config=smoke", f"--model={run}",
                     f"--workdir={tmp_path}", "--config.evaluate.checkpoint=best",
                     f"--config.evaluate.split={split}"], tmp_path)
    assert other.returncode == 0, other.stderr[-3000:]
    ev = json.loads((tmp_path / "evaluate" / f"scratch_best_step{best['step']}_synthetic100_"
                     f"{folder}" / "evaluation.json").read_text())
    assert ev["checkpoint"].endswith(f"/checkpoints/{best['step']}")
    assert ev["count"] == (64 if folder == "train_64" else 200)
  assert (out / "evaluation.json").read_bytes() == latest_json


def test_per_class_figures_of_a_known_confusion_matrix():
  confusion = np.array([[3, 1, 0], [0, 2, 2], [0, 0, 0]])
  out = evaluate.per_class(confusion, ["a", "b", "c"])
  a, b, c = out["per_class"]
  assert (a["recall"], a["precision"]) == (0.75, 1.0)
  assert (b["recall"], b["precision"], b["f1"]) == (0.5, pytest.approx(2 / 3), pytest.approx(4 / 7))
  assert (c["count"], c["precision"], c["f1"]) == (0, 0.0, 0.0)  # predicted twice, never right
  assert out["macro"]["recall"] == pytest.approx((0.75 + 0.5) / 2)  # over classes present
  assert evaluate.confused_pairs(confusion, ["a", "b", "c"]) == [
      ("b", "c", 2, 0.5), ("a", "b", 1, 0.25)]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  """Six synthetic100 test images as PNG (two in a sub-folder), a broken file, a text file."""
  root = tmp_path_factory.mktemp("images")
  split = task_lib.synthetic_split("synthetic100", "test[:6]")
  (root / "sub").mkdir()
  files = []
  for i, image in enumerate(split.images):
    path = root / ("sub" if i % 2 else ".") / f"img{i}.png"
    Image.fromarray(image).resize((16, 16), Image.BILINEAR).save(path)
    files.append(path)
  (root / "broken.png").write_bytes(b"not an image")
  (root / "notes.txt").write_text("not an image and not listed")
  return root, files


def test_predict_writes_the_top_k_of_every_file_and_an_error_line(tiny_scratch, images, tmp_path):
  workdir, _ = tiny_scratch
  root, files = images
  result = run_cli(["--mode=predict", "--config=smoke", f"--model={workdir / 'scratch'}",
                    f"--input={root}", f"--workdir={tmp_path}", "--config.predict.top_k=3",
                    "--config.predict.batch_size=4"], tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  (out,) = (tmp_path / "predict").iterdir()  # a folder per model and input set
  assert out.name.startswith(f"scratch_{root.name}-")
  rows = list(csv.DictReader((out / "predictions.csv").open()))
  assert [r["file"] for r in rows] == sorted(str(f) for f in files + [root / "broken.png"])
  broken = next(r for r in rows if r["file"].endswith("broken.png"))
  assert broken["error"].startswith("not a decodable image") and broken["top1"] == ""
  good = [r for r in rows if not r["error"]]
  assert len(good) == 6 and all(float(r["p1"]) >= float(r["p2"]) >= float(r["p3"]) for r in good)
  lines = [json.loads(x) for x in (out / "predictions.jsonl").open()]
  assert [x["file"] for x in lines] == [r["file"] for r in rows]
  # The same probabilities as tlflax.predict on the decoded images.
  pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in sorted(files)])
  probs, names = tlflax.predict(str(workdir / "scratch"), pixels)
  assert len(names) == 100 and probs.shape == (6, 100)
  for r, p in zip(good, probs, strict=True):
    top = np.argsort(-p)[:3]
    assert [r["top1"], r["top2"], r["top3"]] == [names[c] for c in top]
    assert float(r["p1"]) == pytest.approx(p[top[0]], abs=2e-6)
  assert prediction.input_files(f"{root}/sub/*.png") == sorted(str(f) for f in files[1::2])
  # Another input set goes to a folder of its own; the first prediction stays as it was.
  before = (out / "predictions.csv").read_bytes()
  again = run_cli(["--mode=predict", "--config=smoke", f"--model={workdir / 'scratch'}",
                   f"--input={root}/sub/*.png", f"--workdir={tmp_path}"], tmp_path)
  assert again.returncode == 0, again.stderr[-3000:]
  assert len(list((tmp_path / "predict").iterdir())) == 2
  assert (out / "predictions.csv").read_bytes() == before
  # No file decodes: one line, exit 2, nothing written.
  bad = run_cli(["--mode=predict", "--config=smoke", f"--model={workdir / 'scratch'}",
                 f"--input={root / 'broken.png'}", f"--workdir={tmp_path / 'none'}"], tmp_path)
  errors = [x for x in bad.stderr.splitlines() if x.startswith("tlflax: error:")]
  assert bad.returncode == 2 and len(errors) == 1, bad.stderr[-2000:]
  assert "none of the 1 file(s)" in errors[0] and not (tmp_path / "none" / "predict").exists()


def test_tlflax_predict_resizes_images_of_another_size_as_training_does(tiny_scratch):
  workdir, _ = tiny_scratch
  run = str(workdir / "scratch")
  big = np.random.default_rng(0).integers(0, 256, (3, 24, 20, 3), dtype=np.uint8)
  probs, _ = tlflax.predict(run, big)
  fit = sources.image_fitter(16, "squash")
  resized = np.stack([fit(image).numpy() for image in big])
  model, variables, info = tlflax.load(run)
  x = (resized / 255.0 - np.array(info["mean"])) / np.array(info["std"])
  want = jax.nn.softmax(model.apply(variables, x.astype(np.float32), train=False), -1)
  np.testing.assert_allclose(probs, np.asarray(want), atol=1e-6)
  assert probs.sum(1) == pytest.approx(np.ones(3), abs=1e-5)
  # [0, 1] floats are the same pixels; one (H, W, 3) image is one row, not H of them.
  np.testing.assert_allclose(tlflax.predict(run, big / 255.0)[0], probs, atol=1e-6)
  one, _ = tlflax.predict(run, big[0])
  assert one.shape == (1, 100)
  np.testing.assert_allclose(one[0], probs[0], atol=1e-6)


@pytest.mark.parametrize("dtype,tolerance", [("float32", 1e-5), ("float16", 1e-4)])
def test_export_serves_the_models_probabilities_in_jax_and_tensorflow(tiny_scratch, tmp_path,
                                                                       dtype, tolerance):
  """Within the tolerances docs/using.md states: 1e-5 for float32 models, 1e-4 for float16 ones
  (their compute rounds to float16; measured 9.0e-6 here, 2.3e-5 elsewhere)."""
  workdir, _ = tiny_scratch
  run = workdir / "scratch"
  if dtype == "float16":
    trained = run_cli([*TINY_ARGS, "--config.target.epochs=1", "--config.model.dtype=float16",
                       f"--workdir={tmp_path / 'f16'}"], tmp_path)
    assert trained.returncode == 0, trained.stderr[-3000:]
    run = tmp_path / "f16" / "scratch"
  result = run_cli(["--mode=export", "--config=smoke", f"--model={run}", f"--workdir={tmp_path}"],
                   tmp_path)
  assert result.returncode == 0, result.stderr[-3000:]
  pixels = task_lib.synthetic_split("synthetic100", "test[:5]").images
  pixels = np.stack([sources.image_fitter(16, "squash")(p).numpy() for p in pixels])
  model, variables, info = tlflax.load(str(run))
  x = (pixels / 255.0 - np.array(info["mean"])) / np.array(info["std"])
  want = np.asarray(jax.nn.softmax(model.apply(variables, x.astype(np.float32), train=False), -1))
  served = export.load_jax(str(tmp_path / "export" / "jax"))
  for n in (5, 2):  # the batch dimension is symbolic
    np.testing.assert_allclose(np.asarray(served(pixels[:n])), want[:n], atol=tolerance)
  tf = sources.tensorflow()
  saved = tf.saved_model.load(str(tmp_path / "export" / "saved_model"))
  got = saved.signatures["serving_default"](images=tf.constant(pixels))["probabilities"]
  np.testing.assert_allclose(got.numpy(), want, atol=tolerance)
  meta = json.loads((tmp_path / "export" / "jax" / "model.json").read_text())
  assert (meta["image_size"], meta["num_classes"], len(meta["class_names"])) == (16, 100, 100)
  assert meta["input"].startswith("uint8 (N, 16, 16, 3)") and meta["mean"] == info["mean"]
  assert (tmp_path / "export" / "saved_model" / "model.json").exists()


@pytest.mark.parametrize("given,shape", [
    (np.full((5, 6, 3), 7, np.uint8), (1, 5, 6, 3)),  # one RGB image
    (np.full((2, 5, 6, 4), 7, np.uint8), (2, 5, 6, 3)),  # RGBA: the alpha is dropped
    (np.full((2, 5, 6), 7, np.uint8), (2, 5, 6, 3)),  # grey batch
    (np.full((5, 6, 1), 7, np.int64), (1, 5, 6, 3)),  # grey image, integers in 0..255
    (np.full((2, 5, 6, 3), 7 / 255, np.float32), (2, 5, 6, 3)),  # floats in [0, 1]
    (np.full((1, 5, 6, 3), 7, np.uint16), (1, 5, 6, 3))])  # 16-bit type, values in 0..255
def test_predict_accepts_its_documented_inputs_as_uint8_rgb(given, shape):
  out = prediction.as_images(given)
  assert out.shape == shape and out.dtype == np.uint8 and (out == 7).all()


@pytest.mark.parametrize("given,words", [
    (np.full((2, 5, 6, 3), 200.0, np.float32), "float pixels in [0, 1]"),  # 0-255 as floats
    (np.full((2, 5, 6, 3), 1000, np.uint16), "integer pixels in 0..255"),  # would wrap
    (np.full((2, 5, 6, 3), -1, np.int32), "integer pixels in 0..255"),
    (np.full((2, 5, 6, 3), np.nan, np.float32), "float pixels in [0, 1]"),
    (np.zeros((2, 5, 6, 2), np.uint8), "C = 1, 3 or 4"),
    (np.zeros((5, 6), np.uint8), "(N, H, W) grey"),
    (np.zeros((0, 5, 6, 3), np.uint8), "(N, H, W, C)"),
    (np.zeros((2, 5, 6, 3), bool), "integer (0..255) or float ([0, 1])"),
    (np.array([["a"]]), "got images of shape")])
def test_predict_refuses_every_other_input_naming_shape_dtype_and_range(given, words):
  with pytest.raises(ValueError) as e:
    prediction.as_images(given)
  assert words in str(e.value) and str(given.shape) in str(e.value)
  assert str(given.dtype) in str(e.value)
