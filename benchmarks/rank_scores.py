"""How long --mode=rank's scores take on the host, and the memory they need, at a realistic size:
`python benchmarks/rank_scores.py [N D CLASSES SOURCE_CLASSES]` (default 50,000 images of 2,048
features, 100 target classes, 1,000 source classes: CIFAR-100's training split under a
ResNet-50). The features are random with a mean per class, so the numbers measure time, not
transferability. Prints each score, its seconds and the process's peak memory."""

import resource
import sys
import time

import numpy as np

from tlflax.use import rank, scores


def main(n: int = 50_000, d: int = 2048, classes: int = 100, source_classes: int = 1000) -> None:
  rng = np.random.default_rng(0)
  labels = rng.integers(0, classes, n)
  f = (rng.normal(size=(n, d)) + 0.5 * rng.normal(size=(classes, d))[labels]).astype(np.float32)
  probs = rng.dirichlet(np.ones(source_classes), size=n).astype(np.float32)
  fit, held = rank.holdout(n, 0.2, 0)
  print(f"{n} images x {d} features, {classes} classes, {source_classes} source classes")
  for name, fn in [
      ("LogME", lambda: scores.logme(f, labels, classes)),
      ("probe", lambda: scores.ridge_probe(f[fit], labels[fit], f[held], labels[held],
                                           classes)["accuracy"]),
      ("LEEP", lambda: scores.leep(probs, labels, classes)),
      ("NCE", lambda: scores.nce(probs, labels, classes))]:
    start = time.perf_counter()
    value = fn()
    print(f"{name}: {value:.4f} in {time.perf_counter() - start:.1f} s", flush=True)
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
  print(f"peak memory {peak:.1f} GiB")


if __name__ == "__main__":
  main(*map(int, sys.argv[1:]))
