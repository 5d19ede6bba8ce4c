"""Transferability scores: how well a source network's features (or its own predictions) fit a
target's labels, from one forward pass, before any fine-tuning. All in float64 numpy on the host.

- `logme` (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model from the
  features to each class's one-hot column, maximised over its prior and noise precisions (alpha,
  beta), per example, averaged over classes. From one eigendecomposition of the D x D Gram matrix
  (never an N x N matrix), for every class at once.
- `leep` (Nguyen et al., ICML 2020): the log expected empirical prediction of the source's own
  softmax over its own classes, through the empirical conditional P(target | source class).
- `nce` (Tran et al., ICCV 2019): the negative conditional entropy of the target labels given the
  source's hard predictions.
- `ridge_probe`: a closed-form linear probe (ridge regression onto one-hot labels, as big_vision's
  few-shot evaluator solves it) fit on one part of the examples, its accuracy on the rest.

Labels are integers 0..C-1. Every score is higher for a better source.
"""

import math

import numpy as np

from tlflax.errors import UserError


def _labels(labels, num_classes: int | None) -> tuple[np.ndarray, int]:
  y = np.asarray(labels)
  if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
    raise ValueError(f"labels must be a 1-D integer array, got {y.dtype} of shape {y.shape}")
  c = int(num_classes) if num_classes is not None else int(y.max()) + 1
  if y.size and (y.min() < 0 or y.max() >= c):
    raise ValueError(f"labels must lie in 0..{c - 1}, got {y.min()}..{y.max()}")
  if len(np.unique(y)) < 2:
    raise UserError("the target has fewer than two classes among the scored examples: "
                    "a transferability score compares how well classes are told apart")
  return y.astype(np.int64), c


class Spectrum:
  """One eigendecomposition of a feature matrix's Gram matrix, with what LogME and the ridge
  probe need for any set of targets: F = U S V^T, seen through F^T F = V S^2 V^T (D x D)."""

  def __init__(self, features):
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or not np.all(np.isfinite(f)):
      raise ValueError(f"features must be a finite 2-D array, got shape {f.shape}")
    self.f = f
    self.n, self.d = f.shape
    sigma, v = np.linalg.eigh(f.T @ f)
    sigma = np.clip(sigma, 0.0, None)
    # Directions with no variance carry nothing: keep the rank k, as an SVD would.
    tol = max(sigma.max(initial=0.0), 1e-300) * max(self.n, self.d) * np.finfo(np.float64).eps
    keep = sigma > tol
    self.sigma, self.v = sigma[keep], v[:, keep]
    self.k = int(keep.sum())

  def project(self, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(x2, residual): the squared coordinates (u_i^T y)^2 of each target column on the k
    directions, (k, T), and the squared norm of what no direction explains, (T,), computed as
    ||y - F w||^2 of the least-squares fit, so it is never negative (||y||^2 - ||x||^2 cancels)."""
    fy = self.v.T @ (self.f.T @ targets)  # s_i u_i^T y
    x2 = fy**2 / self.sigma[:, None]
    w = self.v @ (fy / self.sigma[:, None])
    residual = ((targets - self.f @ w) ** 2).sum(axis=0)
    return x2, residual


def _evidence(alpha, beta, n, d, k, sigma, x2, residual):
  """LogME's log evidence for one target column at (alpha, beta): the marginal likelihood of
  y ~ N(0, F F^T / alpha + I / beta), in the D x D form. The D - k directions without variance
  count log(alpha) each in log|alpha I + beta F^T F| (thuml/LogME issue 23)."""
  t = alpha / beta
  m2 = np.sum(sigma / (t + sigma) * x2 / (t + sigma))
  res2 = np.sum(x2 * (t / (t + sigma)) ** 2) + residual
  logdet = np.sum(np.log(alpha + beta * sigma)) + (d - k) * math.log(alpha)
  return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - logdet / 2 - beta / 2 * res2
          - alpha / 2 * m2 - n / 2 * math.log(2 * math.pi))


# Bounds of alpha and beta: where the evidence keeps rising towards alpha -> inf (features that
# explain nothing) or beta -> inf (labels fit exactly), the maximum is read at the bound.
_TINY, _HUGE = 1e-300, 1e300


def logme_columns(spectrum: Spectrum, targets: np.ndarray, max_iter: int = 1000,
                  tol: float = 1e-12) -> np.ndarray:
  """The maximised log evidence per example of each column of `targets` (N, T)."""
  n, d, k, sigma = spectrum.n, spectrum.d, spectrum.k, spectrum.sigma
  x2s, residuals = spectrum.project(np.asarray(targets, np.float64))
  out = np.empty(targets.shape[1])
  for c in range(targets.shape[1]):
    x2, residual = x2s[:, c], residuals[c]
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):  # MacKay's fixed point: the stationarity conditions of the evidence
      t = alpha / beta
      ratio = sigma / (sigma + t)  # in [0, 1]: nothing overflows when alpha runs off to a bound
      gamma = np.sum(ratio)
      m2 = np.sum(ratio * x2 / (t + sigma))
      res2 = np.sum(x2 * (t / (t + sigma)) ** 2) + residual
      alpha = min(gamma / max(m2, _TINY), _HUGE)
      beta = min(max(n - gamma, _TINY) / max(res2, _TINY), _HUGE)
      if abs(alpha / beta - t) <= tol * t:
        break
    out[c] = _evidence(alpha, beta, n, d, k, sigma, x2, residual) / n
  return out


def logme(features, labels, num_classes: int | None = None) -> float:
  """LogME of `features` (N, D) for integer `labels` (N,): the mean over classes of the maximum
  log evidence per example."""
  y, _ = _labels(labels, num_classes)
  spectrum = Spectrum(features)
  present = np.unique(y)  # a class with no example has no evidence to average
  onehot = (y[:, None] == present[None, :]).astype(np.float64)
  return float(np.mean(logme_columns(spectrum, onehot)))


def _source_probs(probs) -> np.ndarray:
  p = np.asarray(probs, np.float64)
  if p.ndim != 2 or not np.all(np.isfinite(p)) or np.any(p < 0):
    raise ValueError(f"source probabilities must be a finite non-negative (N, K) array, got "
                     f"shape {p.shape}")
  return p / p.sum(axis=1, keepdims=True)


def leep(source_probs, labels, num_classes: int | None = None) -> float:
  """LEEP: (1/N) sum_i log sum_z P(y_i | z) theta_i(z), with theta_i the source's softmax over
  its K classes (N, K) and P(y | z) = P(y, z) / P(z) from theta and the target labels. A source
  class no example gives any mass has P(z) = 0: its terms are 0 (every theta_i(z) is 0 there)."""
  y, c = _labels(labels, num_classes)
  theta = _source_probs(source_probs)
  joint = np.zeros((c, theta.shape[1]))
  np.add.at(joint, y, theta)
  joint /= len(y)
  pz = joint.sum(axis=0)
  cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)
  expected = np.sum(theta * cond[y], axis=1)
  return float(np.mean(np.log(expected)))


def nce(source_probs, labels, num_classes: int | None = None) -> float:
  """NCE: -H(Y | Z), Z the source's most probable class, from the empirical joint counts."""
  y, c = _labels(labels, num_classes)
  z = np.argmax(_source_probs(source_probs), axis=1)
  joint = np.zeros((c, int(z.max()) + 1))
  np.add.at(joint, (y, z), 1.0)
  joint /= len(y)
  pz = joint.sum(axis=0)
  nz = joint > 0
  return float(np.sum(joint[nz] * np.log((joint / np.where(pz > 0, pz, 1.0))[nz])))


# Ridge strengths tried, relative to the mean eigenvalue of the fitted features' Gram matrix.
RIDGE = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def ridge_probe(train_features, train_labels, test_features, test_labels,
                num_classes: int | None = None) -> dict:
  """A linear probe in closed form: features centred and scaled by the fitted part's statistics,
  ridge regression onto one-hot labels for each strength in `RIDGE` from one eigendecomposition,
  prediction the largest output. {'accuracy': the best held-out accuracy, 'ridge': its relative
  strength} (the held-out part both picks the strength and is scored, as big_vision's few-shot
  evaluator does)."""
  y, c = _labels(train_labels, num_classes)
  yt = np.asarray(test_labels, np.int64)
  fit = np.array(train_features, np.float64)  # a copy, centred and scaled in place
  mean, scale = fit.mean(axis=0), fit.std(axis=0) + 1e-6
  fit -= mean
  fit /= scale
  spectrum = Spectrum(fit)
  test = (np.asarray(test_features, np.float64) - mean) / scale
  onehot = np.eye(c)[y]
  target = onehot - onehot.mean(axis=0)
  fy = spectrum.v.T @ (spectrum.f.T @ target)
  best = {"accuracy": -1.0, "ridge": None}
  for rel in RIDGE:
    lam = rel * spectrum.sigma.mean()
    w = spectrum.v @ (fy / (spectrum.sigma + lam)[:, None])
    accuracy = float(np.mean(np.argmax(test @ w, axis=1) == yt))
    if accuracy > best["accuracy"]:
      best = {"accuracy": accuracy, "ridge": rel}
  return best
