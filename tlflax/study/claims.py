"""The study's three claims, judged on the mean curves over seeds of a scratch and a transfer
experiment, with verdicts that cannot overclaim.

A claim compares extremes of curves: scratch's lowest test loss, its best accuracy in 30 epochs,
the epoch of its lowest loss. An extreme read off a curve that stops too early, or that skips
epochs, is only a bound on the real one, so each verdict states what it needs:
  holds            the compared extremes are real: the curve they come from ran through the
                   claim's window and was evaluated at every epoch of it
  does not hold    the same of the curve whose extreme would have made it hold
  cannot be judged otherwise, with the reason
Every verdict names the experiments, seeds and epochs it rests on.
"""

import dataclasses

import numpy as np

WITHIN_EPOCHS = 25  # claims 1 and 2: transfer gets there within this many epochs
SCRATCH_EPOCHS = 30  # claim 2: what scratch reaches in this many epochs
OVERFIT_EPOCH = 60  # claim 3: scratch overfits after about this many epochs ...
OVERFIT_WINDOW = (40, 80)  # ... read as: its test loss is lowest in this range of epochs
RISE = 0.01  # ... and then ends at least 1% above that minimum while its train loss still falls
CLAIMS = (
    f"Transfer reaches a lower test loss than scratch ever does, within {WITHIN_EPOCHS} epochs.",
    (f"Transfer reaches, within {WITHIN_EPOCHS} epochs, a test accuracy that scratch does not "
     f"reach in {SCRATCH_EPOCHS}."),
    (f"Scratch overfits after about {OVERFIT_EPOCH} epochs (its test loss is lowest at an epoch "
     f"in {OVERFIT_WINDOW[0]}-{OVERFIT_WINDOW[1]} and rises afterwards while its train loss "
     "still falls)."))
HOLDS, FAILS, UNKNOWN = "holds", "does not hold", "cannot be judged"


def _verdict(number: int, verdict: str, epoch: int | None, evidence: str,
             rests_on: str = "") -> dict:
  return {"claim": CLAIMS[number - 1], "verdict": verdict, "epoch": epoch, "evidence": evidence,
          "rests_on": rests_on}


def _unseen(epochs: list[int], upto: int) -> list[int]:
  """The epochs 1..upto at which a curve has no evaluation."""
  return sorted(set(range(1, upto + 1)) - set(epochs))


def _gap_text(who: str, epochs: list[int], upto: int) -> str:
  missing = _unseen(epochs, upto)
  return (f"{who} was evaluated at {upto - len(missing)} of its first {upto} epochs (see "
          "eval_every_epochs), so its extremes may lie between evaluations")


def _transfer_window_unseen(number: int, et: list[int], seen: str) -> dict | None:
  """'Cannot be judged' (`seen`: what transfer showed) when transfer's first 25 epochs were not
  all run and evaluated, so its best there may be better than seen; None when they were."""
  if et[-1] < WITHIN_EPOCHS:
    return _verdict(number, UNKNOWN, None, f"{seen}, and it ran only {et[-1]} of "
                    f"{WITHIN_EPOCHS} epochs")
  if _unseen(et, WITHIN_EPOCHS):
    return _verdict(number, UNKNOWN, None, f"{seen}, but " + _gap_text("transfer", et,
                                                                       WITHIN_EPOCHS))
  return None


@dataclasses.dataclass(frozen=True)
class _Curves:
  """An experiment's mean curves over the seeds a claim averages: per evaluated epoch, the mean
  of the seeds' finite values (a point where every seed is non-finite counts as the worst value:
  it is no extreme), and the seeds left out because they stopped before the claim's span."""

  name: str
  seeds: list
  epochs: list[int]
  values: dict[str, list[float]]
  left_out: list[str]

  def rests_on(self) -> str:
    """'scratch: seeds 0, 1, epochs 1-100 (seed 2 left out: it stopped at epoch 30)'"""
    seeds = ", ".join(str(s) for s in self.seeds)
    out = f"{self.name}: seed{'s' * (len(self.seeds) > 1)} {seeds}, epochs {self.epochs[0]}-" \
          f"{self.epochs[-1]}"
    return out + (f" ({'; '.join(self.left_out)})" if self.left_out else "")


_WORST = {"test_loss": np.inf, "train_loss": np.inf, "test_accuracy": -np.inf}


def _averaged(experiment: dict, span: int) -> _Curves | None:
  """The mean curves of `experiment` over its seeds whose evaluations reach epoch `span` (all of
  them when none does: the verdict then says how short they are), on the epochs every one of
  those seeds evaluated. None when they share no epoch."""
  per_seed = experiment["seed_curves"]
  last = {s: c["epochs"][-1] for s, c in per_seed.items() if c["epochs"]}
  covering = [s for s in last if last[s] >= span] or list(last)
  left_out = [f"seed {s} left out: it stopped at epoch {last[s]}, before epoch {span}"
              for s in last if s not in covering]
  epochs = sorted(set.intersection(*(set(per_seed[s]["epochs"]) for s in covering)))
  if not epochs:
    return None
  values = {}
  for key, worst in _WORST.items():
    if not all(key in per_seed[s] for s in covering):
      continue
    rows = []
    for s in covering:
      at = dict(zip(per_seed[s]["epochs"], per_seed[s][key], strict=True))
      rows.append([at[e] if at[e] is not None else np.nan for e in epochs])
    rows = np.asarray(rows, dtype=float)
    finite = np.isfinite(rows)
    counts = finite.sum(0)
    sums = np.where(finite, rows, 0.0).sum(0)
    values[key] = np.where(counts > 0, sums / np.maximum(counts, 1), worst).tolist()
  return _Curves(experiment["name"], [_seed(s) for s in covering], epochs, values, left_out)


def _seed(s):
  return int(s) if str(s).lstrip("-").isdigit() else s


def judge_claims(scratch: dict | None, transfer: dict | None) -> list[dict]:
  """The three claims on a scratch and a transfer experiment (the report's experiment dicts, with
  each seed's curves in `seed_curves`): each a verdict, the epoch it names, what it rests on.

  Each claim averages the seeds that cover its span: scratch's whole run for claims 1 and 3 (its
  lowest loss "ever", and what comes after it), its first 30 epochs for claim 2, transfer's first
  25 for claims 1 and 2; a seed that stopped earlier is left out and named."""
  if scratch is None or transfer is None:
    missing = "scratch" if scratch is None else "transfer"
    return [_verdict(i, UNKNOWN, None, f"no finished {missing} runs to compare")
            for i in (1, 2, 3)]
  whole = max(c["epochs"][-1] for c in scratch["seed_curves"].values() if c["epochs"])
  s1, s2, t = (_averaged(scratch, whole), _averaged(scratch, SCRATCH_EPOCHS),
               _averaged(transfer, WITHIN_EPOCHS))
  if s1 is None or s2 is None or t is None:
    return [_verdict(i, UNKNOWN, None, "the seeds of an experiment share no evaluated epoch")
            for i in (1, 2, 3)]
  out = [_claim_loss(s1.epochs, s1.values["test_loss"], t.epochs, t.values["test_loss"]),
         _claim_accuracy(s2.epochs, s2.values["test_accuracy"], t.epochs,
                         t.values["test_accuracy"]),
         _claim_overfit(s1.epochs, s1.values["test_loss"], s1.values.get("train_loss"))]
  for verdict, basis in zip(out, ((s1, t), (s2, t), (s1,)), strict=True):
    verdict["rests_on"] = "; ".join(c.rests_on() for c in basis)
  return out


def _claim_loss(es, loss_s, et, loss_t) -> dict:
  """Claim 1. 'Holds' needs scratch's lowest loss to be real: scratch ran at least 25 epochs,
  was evaluated at every one of them, and its loss is lowest before its last evaluation.
  'Does not hold' needs transfer's first 25 epochs, every one evaluated."""
  i = int(np.argmin(loss_s))
  floor = f"scratch's lowest mean test loss {loss_s[i]:.4f} (epoch {es[i]} of {es[-1]})"
  below = [(e, v) for e, v in zip(et, loss_t) if v < loss_s[i]]
  if below and below[0][0] <= WITHIN_EPOCHS:
    e, v = below[0]
    got = f"transfer's mean test loss {v:.4f} at epoch {e} is below {floor}"
    if es[-1] < WITHIN_EPOCHS:
      return _verdict(1, UNKNOWN, e, f"{got}, but scratch ran only {es[-1]} of "
                      f"{WITHIN_EPOCHS} epochs: its lowest loss is only an upper bound")
    if i + 1 == len(es):
      return _verdict(1, UNKNOWN, e, f"{got}, but scratch's loss was still falling at its last "
                      "evaluation: its lowest loss is only an upper bound")
    if _unseen(es, es[-1]):
      return _verdict(1, UNKNOWN, e, f"{got}, but {_gap_text('scratch', es, es[-1])}")
    return _verdict(1, HOLDS, e, got)
  best = int(np.argmin(loss_t))
  seen = f"transfer's lowest is {loss_t[best]:.4f} at epoch {et[best]}"
  short = _transfer_window_unseen(1, et, f"{seen}, not below {floor}")
  if short:
    return short
  if below:
    return _verdict(1, FAILS, below[0][0], f"transfer gets below {floor} only at epoch "
                    f"{below[0][0]}, after {WITHIN_EPOCHS}")
  return _verdict(1, FAILS, None, f"{seen}, not below {floor}")


def _claim_accuracy(es, acc_s, et, acc_t) -> dict:
  """Claim 2. 'Holds' needs scratch's best of its first 30 epochs, every one evaluated;
  'does not hold' needs transfer's first 25, every one evaluated."""
  window = [i for i, e in enumerate(es) if e <= SCRATCH_EPOCHS]
  if not window or et[0] > WITHIN_EPOCHS:
    return _verdict(2, UNKNOWN, None, f"scratch has no evaluation in its first {SCRATCH_EPOCHS} "
                    f"epochs or transfer none in its first {WITHIN_EPOCHS} (see "
                    "eval_every_epochs)")
  i = max(window, key=lambda k: acc_s[k])
  bar = f"scratch's best mean test accuracy in its first {SCRATCH_EPOCHS} epochs " \
        f"({acc_s[i]:.4f}, epoch {es[i]})"
  above = [(e, v) for e, v in zip(et, acc_t) if v > acc_s[i] and e <= WITHIN_EPOCHS]
  if above:
    e, v = above[0]
    got = f"transfer's mean test accuracy {v:.4f} at epoch {e} exceeds {bar}"
    if es[-1] < SCRATCH_EPOCHS:
      return _verdict(2, UNKNOWN, e, f"{got}, but scratch ran only {es[-1]} of "
                      f"{SCRATCH_EPOCHS} epochs")
    if _unseen(es, SCRATCH_EPOCHS):
      return _verdict(2, UNKNOWN, e, f"{got}, but {_gap_text('scratch', es, SCRATCH_EPOCHS)}")
    return _verdict(2, HOLDS, e, got)
  j = max((k for k, e in enumerate(et) if e <= WITHIN_EPOCHS), key=lambda k: acc_t[k])
  seen = f"transfer's best in its first {WITHIN_EPOCHS} epochs is {acc_t[j]:.4f} (epoch {et[j]})"
  return _transfer_window_unseen(2, et, f"{seen}, not above {bar}") or _verdict(
      2, FAILS, None, f"{seen}, not above {bar}")


def _claim_overfit(es, loss_s, train_s) -> dict:
  """Claim 3. Any verdict needs scratch to have run through the window (80 epochs): before
  that, its lowest loss may still come later. Its lowest loss is read at the last epoch that
  reaches it (from there on the loss only rises); when the epochs next to it were not evaluated,
  the real lowest lies somewhere between those neighbours, and the claim is decided only when
  that whole bracket is inside the window (holds) or outside it (does not hold)."""
  if train_s is None:
    return _verdict(3, UNKNOWN, None, "the scratch runs recorded no train loss")
  low = min(loss_s)
  i = max(k for k, v in enumerate(loss_s) if v == low)
  rises = loss_s[-1] > loss_s[i] * (1 + RISE)
  falls = train_s[-1] < train_s[i]
  if i + 1 == len(es):
    at = (f"scratch's mean test loss is lowest at its last epoch, {es[i]} ({loss_s[i]:.4f})")
  else:
    at = (f"scratch's mean test loss is lowest at epoch {es[i]} ({loss_s[i]:.4f}) and ends at "
          f"{loss_s[-1]:.4f} (epoch {es[-1]}); its train loss goes {train_s[i]:.4f} -> "
          f"{train_s[-1]:.4f} meanwhile")
  if es[-1] < OVERFIT_WINDOW[1]:
    return _verdict(3, UNKNOWN, None, f"{at}, but scratch ran only {es[-1]} of "
                    f"{OVERFIT_WINDOW[1]} epochs: its lowest loss may still come later")
  first = es[i - 1] + 1 if i > 0 else 1
  last = es[i + 1] - 1 if i + 1 < len(es) else es[i]
  lo_w, hi_w = OVERFIT_WINDOW
  if (first, last) != (es[i], es[i]):
    bracket = (f"{at}, but the evaluations next to it leave its real lowest loss anywhere in "
               f"epochs {first}-{last}")
    inside, outside = lo_w <= first and last <= hi_w, last < lo_w or first > hi_w
    if not (rises and falls):
      return _verdict(3, UNKNOWN, None, f"{bracket}, perhaps below what was seen: evaluate every "
                      "epoch (eval_every_epochs=1) to decide it")
    if not (inside or outside):
      return _verdict(3, UNKNOWN, None, f"{bracket}: eval_every_epochs <= "
                      f"{_deciding_spacing(es[i])} would decide it")
    return _verdict(3, HOLDS if inside else FAILS, es[i],
                    bracket + (f", inside {lo_w}-{hi_w}" if inside else
                               f": it overfits after about epoch {es[i]}, not {OVERFIT_EPOCH}"))
  if rises and falls:
    inside = lo_w <= es[i] <= hi_w
    return _verdict(3, HOLDS if inside else FAILS, es[i],
                    at + ("" if inside else f": it overfits after epoch {es[i]}, not about "
                          f"{OVERFIT_EPOCH}"))
  return _verdict(3, FAILS, None, f"{at}: no overfitting in {es[-1]} epochs")


def _deciding_spacing(epoch: int) -> int:
  """The largest evaluation spacing whose bracket around a lowest loss seen at `epoch` falls
  wholly inside or wholly outside the overfitting window."""
  lo_w, hi_w = OVERFIT_WINDOW
  if lo_w <= epoch <= hi_w:
    return max(1, min(epoch - lo_w + 1, hi_w - epoch + 1))
  return max(1, lo_w - epoch if epoch < lo_w else epoch - hi_w)
