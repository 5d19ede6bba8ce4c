"""`--mode=rank`: which source to start from, and how much of it to keep, before fine-tuning any.

Each candidate in `config.rank.sources` (a tlflax run folder or checkpoint, a safetensors file,
hf://ORG/NAME, or `random`: the configured model with fresh weights, the floor) runs once over
the target's training images (its label budget applied, at the target's image size, normalised
with the candidate's own statistics), on every device, batch by batch: from the split on the
devices, or streamed from the host where `config.data` would stream a training run's. Its pooled
output after every stage of the backbone, and its softmax over its own classes, are scored on the
host (`tlflax.use.scores`): LogME and a closed-form linear probe at every stage, LEEP and NCE from
its own head (not for `random`, whose head has no classes of its own). The deepest stage that fits
the target best says how much of the network to freeze (`suggest`). `tlflax.use.ranking` writes
DIR/rank/ and, where the workdir holds runs fine-tuned from some of the candidates, how well each
score's order agreed with theirs.
"""

import dataclasses
import functools
import os
import time

import jax
import numpy as np
from absl import logging

from tlflax import parallel
from tlflax.data import batches, feeds
from tlflax.data import task as task_lib
from tlflax.errors import UserError
from tlflax.models import resnet
from tlflax.train import steps
from tlflax.use import loader, ranking, scores

RANDOM = "random"
WHAT = "--config.rank.sources"


@dataclasses.dataclass
class Candidate:
  """A source to score: its name as given, model, variables, input statistics, and whether its
  head predicts classes of its own (LEEP and NCE need them)."""

  name: str
  model: object
  variables: dict
  mean: np.ndarray
  std: np.ndarray
  own_head: bool
  info: dict


def sources(config, workdir: str) -> list[str]:
  """The candidates: `config.rank.sources`, or the configured transfer source (init_from, else
  DIR/pretrain) against `random`."""
  named = [str(s) for s in config.rank.sources]
  if not named:
    named = [config.transfer.init_from or os.path.join(workdir, "pretrain"), RANDOM]
  if len(set(named)) != len(named):
    twice = sorted({s for s in named if named.count(s) > 1})
    raise UserError(f"{WHAT} names {', '.join(twice)} twice: name each candidate once")
  return named


def load_candidates(names: list[str], config, task: task_lib.Task) -> list[Candidate]:
  """Every candidate loaded, before any forward pass: a missing or unreadable one is one line."""
  out = []
  for name in names:
    if name == RANDOM:
      model = resnet.from_config(config.model, task.num_classes)
      variables = resnet.init_variables(config.model, task.num_classes,
                                        task.train.images.shape[1:], config.seed)
      info = {"model": config.model.name, "width": config.model.width}
      out.append(Candidate(name, model, variables, task.mean, task.std, False, info))
      continue
    model, variables, info = loader.load(name, WHAT)
    mean = np.asarray(info["mean"] if info.get("mean") is not None else task.mean, np.float32)
    std = np.asarray(info["std"] if info.get("std") is not None else task.std, np.float32)
    out.append(Candidate(name, model, variables, mean, std, True, info))
  return out


def _taps(variables, data, rows, index, *, model, axis_name=None):
  """Per shard: every stage's pooled output and the softmax of batch `index`, the whole batch's
  in order on every device (`steps.whole_batch`)."""
  batch = batches.shard_eval_batch(data, rows[index])
  taps = model.apply(variables, batch["image"], train=False, stage_features=True)
  taps["probs"] = jax.nn.softmax(taps.pop("logits"), axis=-1)
  return jax.tree.map(lambda x: steps.whole_batch(x, axis_name), taps)


def _taps_on_batch(variables, data, batch, index, *, model, axis_name=None):
  """Per shard: `_taps` on a batch streamed from the host (`data/feeds.py`'s `StreamFeed`)."""
  del index
  return _taps(variables, *steps.as_on_device(data, batch), 0, model=model, axis_name=axis_name)


def features(candidate: Candidate, split: task_lib.Split, num_classes: int, placement,
             batch_size: int, data_cfg=None) -> dict[str, np.ndarray]:
  """{'stage1': (N, C1), ..., 'probs': (N, K)} of the candidate on `split`, in example order.

  The split goes on the devices, or is streamed to them batch by batch from the host when
  `data_cfg` (config.data) says so: `data.pipeline`, or under 'auto' a split larger than the
  device budget, as training decides (`feeds.choose`). Only the pooled features come back."""
  empty = task_lib.Split(split.images[:0], split.labels[:0])  # nothing to train: only `split`
  task = task_lib.Task("rank", empty, split, num_classes, candidate.mean, candidate.std)
  kind, why = feeds.choose(data_cfg, task, placement) if data_cfg is not None else ("device", "")
  if kind == "stream":
    logging.info("[rank] %s: streaming batches from host memory (%s)", candidate.name, why)
    feed = feeds.StreamFeed(placement, task, batch_size, data_cfg.prefetch)
    taps, args = _taps_on_batch, feed.eval_batches()(*feed.parts["test"])
  else:
    data, rows, parts = feeds.place_eval(placement, task, batch_size)
    taps, args = _taps, ((data, rows, np.int32(i)) for i in range(*parts["test"]))
  fn = placement.spmd(functools.partial(taps, model=candidate.model), 4, split=(2,))
  variables = placement.replicate(jax.device_get(candidate.variables))
  chunks = [jax.device_get(fn(variables, *a)) for a in args]
  return {k: np.concatenate([c[k] for c in chunks])[:len(split)] for k in chunks[0]}


def holdout(num_examples: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(fit, held-out) example indices of the linear probe: a seeded permutation's cut."""
  order = np.random.default_rng(seed).permutation(num_examples)
  held = max(1, round(num_examples * fraction))
  return np.sort(order[held:]), np.sort(order[:held])


def score(feats: dict, labels: np.ndarray, num_classes: int, own_head: bool,
          split: tuple[np.ndarray, np.ndarray]) -> dict:
  """Every score of one candidate: {'stages': {'stage1': {'logme', 'probe'}, ...}, 'logme',
  'probe' (the last stage: the pooled features), 'leep', 'nce' (None without a head of its own)}."""
  fit, held = split
  stages = {}
  names = ranking.stage_names(feats)
  for name in names:
    f = feats[name]
    stages[name] = {
        "logme": scores.logme(f, labels, num_classes),
        "probe": scores.ridge_probe(f[fit], labels[fit], f[held], labels[held],
                                    num_classes)["accuracy"]}
  last = stages[names[-1]]
  out = {"stages": stages, "logme": last["logme"], "probe": last["probe"], "leep": None,
         "nce": None}
  if own_head:
    out["leep"] = scores.leep(feats["probs"], labels, num_classes)
    out["nce"] = scores.nce(feats["probs"], labels, num_classes)
  return out


def suggest(stage_logme: dict, floor: dict | None) -> dict:
  """How much of a source to freeze, read from its LogME per stage: the deepest-scoring stage k
  among those where it beats the random floor (all of them without one) is the prefix worth
  keeping as it is; `stages:k`, or `backbone` when the last stage scores best (the pooled
  features fit the target best: a source close to it); `none` where it beats the floor nowhere."""
  names = ranking.stage_names(stage_logme)
  better = [s for s in names if floor is None or stage_logme[s] > floor[s]]
  if not better:
    return {"freeze": "none", "stage": 0,
            "why": "its features fit the target no better than random ones at any stage"}
  best = max(better, key=lambda s: (stage_logme[s], ranking.stage_number(s)))
  k = ranking.stage_number(best)
  freeze = "backbone" if k == len(names) else f"stages:{k}"
  above = "" if floor is None else f", {stage_logme[best] - floor[best]:+.4f} over random"
  why = f"LogME is highest after stage {k} ({stage_logme[best]:.4f}{above})"
  return {"freeze": freeze, "stage": k, "why": why}


def run(config, workdir: str, placement=None) -> str:
  """Ranks the candidates on the target; writes DIR/rank/ and returns it."""
  placement = placement or parallel.Placement.create(config.parallel)
  names = sources(config, workdir)
  task = task_lib.load_task(config.target, config.data_dir, config.seed, config.data,
                            where="target")
  labels = np.asarray(task.train.labels, np.int64)
  if len(np.unique(labels)) < 2:
    raise UserError(f"the target's training images ({config.target.dataset} "
                    f"{config.target.train_split}) hold fewer than two classes: there is nothing "
                    "to rank sources on")
  candidates = load_candidates(names, config, task)
  split = holdout(len(labels), config.rank.holdout, config.seed)
  batch = config.rank.batch_size or config.target.eval_batch_size
  results = []
  for i, c in enumerate(candidates):
    t0 = time.perf_counter()
    feats = features(c, task.train, task.num_classes, placement, batch, config.data)
    t1 = time.perf_counter()
    result = score(feats, labels, task.num_classes, c.own_head, split)
    t2 = time.perf_counter()
    result.update(name=c.name, model=c.info.get("model"), width=c.info.get("width"),
                  features_s=t1 - t0, scores_s=t2 - t1,
                  dims={k: int(feats[k].shape[1]) for k in ranking.stage_names(feats)})
    logging.info("[rank] %d/%d %s: LogME %.4f, probe %.4f%s (features %.1fs, scores %.1fs)",
                 i + 1, len(candidates), c.name, result["logme"], result["probe"],
                 "" if result["leep"] is None else f", LEEP {result['leep']:.4f}",
                 t1 - t0, t2 - t1)
    results.append(result)
  floor = next((r["stages"] for r in results if r["name"] == RANDOM), None)
  for r in results:
    if r["name"] != RANDOM:
      r["suggest"] = suggest({s: v["logme"] for s, v in r["stages"].items()},
                             None if floor is None else {s: v["logme"] for s, v in floor.items()})
  target = {"dataset": config.target.dataset, "train_split": config.target.train_split,
            "examples_per_class": config.target.examples_per_class,
            "image_size": config.target.image_size, "examples": len(labels),
            "classes": task.num_classes, "probe_held_out": len(split[1])}
  out = os.path.join(workdir, "rank")
  if parallel.is_main_process():
    ranking.write(out, target, results, ranking.fine_tuned(workdir, candidates, config))
  parallel.sync(f"ranked {out}")
  return out
