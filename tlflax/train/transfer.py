"""Transfer learning: rules over parameter paths, and a source checkpoint turned into target init.

Every per-parameter decision is a rule over '/'-joined parameter paths such as
`stage2_block1/conv1/kernel`: which parameters are frozen, their learning-rate multipliers, and
which leaves of a source checkpoint are re-initialised instead of loaded.
"""

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from tlflax.errors import UserError

FROZEN, TRAINABLE = "frozen", "trainable"


# ------------------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------------------


def path_str(key_path) -> str:
  """'stage1_block1/conv1/kernel' for a tree_util key path."""
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                  for k in key_path)


def flatten(tree) -> dict[str, Any]:
  """{path: leaf} for a nested dict of parameters."""
  return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _compile_all(patterns: Sequence[str], what: str) -> list[re.Pattern]:
  out = []
  for p in patterns:
    try:
      out.append(re.compile(p))
    except re.error as e:
      raise UserError(f"{what}: {p!r} is not a valid regex ({e})") from e
  return out


def _short(paths: Sequence[str], most: int = 6) -> str:
  paths = list(paths)
  more = f" (+{len(paths) - most} more)" if len(paths) > most else ""
  return ", ".join(paths[:most]) + more


def label_by_rules(params, rules: Sequence[tuple[str, Any]], what: str = "rules"):
  """A tree of values: each leaf takes the value of the first rule whose regex matches its path.

  Raises a `UserError` listing the parameters that no rule covers.
  """
  compiled = list(zip(_compile_all([r for r, _ in rules], what), [v for _, v in rules]))

  def pick(path):
    return next((v for rx, v in compiled if rx.search(path)), None)

  flat = flatten(params)
  uncovered = [p for p in flat if pick(p) is None]
  if uncovered:
    raise UserError(f"{what} cover no rule for {len(uncovered)} parameters "
                    f"({_short(uncovered)}): add a rule that matches them, e.g. ('.*', ...)")
  return jax.tree_util.tree_map_with_path(lambda p, _: pick(path_str(p)), params)


# ------------------------------------------------------------------------------------------------
# Freezing
# ------------------------------------------------------------------------------------------------


def freeze_patterns(policy, num_stages: int) -> tuple[str, ...]:
  """Regexes of frozen parameters for 'none', 'backbone', 'stages:N' or a list of regexes."""
  if isinstance(policy, str):
    if policy == "none":
      return ()
    if policy == "backbone":
      return (r"^(?!head/)",)
    m = re.fullmatch(r"stages:(\d+)", policy)
    if m and int(m.group(1)) <= num_stages:
      return (r"^stem_",) + tuple(rf"^stage{i}_" for i in range(1, int(m.group(1)) + 1))
    raise UserError(f"unknown freeze policy {policy!r}: use 'none', 'backbone', 'stages:N' with "
                    f"N in 0..{num_stages}, or a list of regexes over parameter paths")
  return tuple(policy)


def trainable_labels(params, policy, num_stages: int):
  """'frozen' / 'trainable' per parameter. Every regex must match something, and something must
  stay trainable."""
  patterns = freeze_patterns(policy, num_stages)
  paths = list(flatten(params))
  for rx, text in zip(_compile_all(patterns, "config.transfer.freeze"), patterns):
    if not any(rx.search(p) for p in paths):
      raise UserError(f"freeze regex {text!r} matches no parameter; paths look like "
                      f"{_short(paths, 3)}")
  labels = label_by_rules(params, [(p, FROZEN) for p in patterns] + [(".*", TRAINABLE)],
                          "freeze rules")
  if TRAINABLE not in jax.tree.leaves(labels):
    raise UserError(f"freeze policy {policy!r} freezes every parameter: leave something to train")
  return labels


def check_rules(transfer_cfg, params, num_stages: int) -> None:
  """Every rule of the transfer block against the model's real parameter paths (`params` may be
  ShapeDtypeStructs), so a regex that does not compile or matches nothing is reported before
  anything trains, not after a pretraining."""
  for policy in [transfer_cfg.freeze] + [p for _, p in transfer_cfg.unfreeze]:
    trainable_labels(params, policy, num_stages)
  lr_multipliers(params, transfer_cfg.lr_mult, transfer_cfg.layer_decay, num_stages)
  _compile_all(transfer_cfg.reinit, "config.transfer.reinit")


def check_frozen_bn(mode: str) -> None:
  """'running' or 'adapt', else a `UserError`."""
  if mode not in ("running", "adapt"):
    raise UserError(f"config.transfer.frozen_bn must be 'running' or 'adapt', got {mode!r}")


def check_layer_decay(decay: float) -> None:
  """In (0, 1], else a `UserError`."""
  if not 0 < decay <= 1:
    raise UserError(f"config.transfer.layer_decay must be in (0, 1], got {decay}")


def frozen_layout(labels, num_stages: int, frozen_bn: str) -> dict:
  """Model settings for a freeze: which BatchNorms run on running averages, where the backward
  pass may stop (`stop_gradient_units`: leading units of stem, stage1..N that are all frozen)."""
  check_frozen_bn(frozen_bn)
  flat = flatten(labels)
  units = ["stem_"] + [f"stage{i}_" for i in range(1, num_stages + 1)]
  prefix = 0
  for unit in units:
    members = [v for p, v in flat.items() if p.startswith(unit)]
    if not members or any(v != FROZEN for v in members):
      break
    prefix += 1
  bn_modules: dict[str, list[str]] = {}
  for p, v in flat.items():
    module = p.rsplit("/", 1)[0]
    if re.fullmatch(r"(.*_)?bn\d*", module.rsplit("/", 1)[-1]):  # stem_bn, bn1, proj_bn
      bn_modules.setdefault(module, []).append(v)
  frozen = tuple(sorted(m for m, vs in bn_modules.items() if all(v == FROZEN for v in vs)))
  return {"frozen_bn": frozen if frozen_bn == "running" else (), "stop_gradient_units": prefix}


def policy_at(transfer_cfg, epoch: int):
  """The freeze policy in force during `epoch` (0-based): `freeze`, then the `unfreeze` steps."""
  if transfer_cfg is None:
    return "none"
  policy = transfer_cfg.freeze
  for start, step_policy in sorted(tuple(x) for x in transfer_cfg.unfreeze):
    if epoch >= start:
      policy = step_policy
  return tuple(policy) if isinstance(policy, list) else policy


# ------------------------------------------------------------------------------------------------
# Per-layer learning rates
# ------------------------------------------------------------------------------------------------


def depth_from_head(path: str, num_stages: int) -> int:
  """0 for the head, k for the k-th stage counted from the top, num_stages + 1 for the stem."""
  m = re.match(r"stage(\d+)_", path)
  if m:
    return num_stages - int(m.group(1)) + 1
  return num_stages + 1 if path.startswith("stem_") else 0


def lr_multipliers(params, rules: Sequence[tuple[str, float]], layer_decay: float,
                   num_stages: int):
  """A tree of learning-rate factors: layer_decay ** depth_from_head times the first matching rule."""
  check_layer_decay(layer_decay)
  compiled = list(zip(_compile_all([r for r, _ in rules], "config.transfer.lr_mult"),
                      [float(m) for _, m in rules]))

  def factor(key_path, _):
    path = path_str(key_path)
    rule = next((m for rx, m in compiled if rx.search(path)), 1.0)
    return np.float32(layer_decay ** depth_from_head(path, num_stages) * rule)

  return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_tree(factors) -> optax.GradientTransformation:
  """Multiplies each update by its own factor (per-layer learning rates after momentum)."""

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u * f.astype(u.dtype), updates, factors), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


# ------------------------------------------------------------------------------------------------
# Source checkpoint -> target variables
# ------------------------------------------------------------------------------------------------


def merge_pretrained(fresh: dict, source: dict, reinit: Sequence[str], source_name: str) -> dict:
  """Target variables: source leaves where path and shape match, fresh init where `reinit` says.

  Anything else that is missing, extra or of another shape is a `UserError` listing the paths.
  """
  rx = _compile_all(reinit, "config.transfer.reinit")

  def wanted_fresh(path):
    return any(r.search(path) for r in rx)

  srcs = {c: flatten(source.get(c, {})) for c in fresh}
  renewed, missing, unexpected, mismatched = [], [], [], []
  for collection, fresh_tree in fresh.items():
    src, tgt = srcs[collection], flatten(fresh_tree)
    for path, leaf in tgt.items():
      full = f"{collection}/{path}"
      if wanted_fresh(path):
        renewed.append(full)
      elif path not in src:
        missing.append(full)
      elif tuple(src[path].shape) != tuple(leaf.shape):
        mismatched.append(f"{full} {tuple(src[path].shape)} vs {tuple(leaf.shape)}")
    unexpected += [f"{collection}/{p}" for p in src if p not in tgt and not wanted_fresh(p)]
  problems = [f"{name} [{_short(paths)}]" for name, paths in (
      ("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)) if paths]
  if problems:
    raise UserError(f"checkpoint {source_name} does not fit the target model: "
                    f"{'; '.join(problems)}: re-initialise such leaves with "
                    "config.transfer.reinit (regexes) or start from a matching checkpoint")

  def take(collection):
    src = srcs[collection]
    return lambda p, x: x if wanted_fresh(path_str(p)) else jnp.asarray(src[path_str(p)], x.dtype)

  merged = {c: jax.tree_util.tree_map_with_path(take(c), tree) for c, tree in fresh.items()}
  kept = sum(len(jax.tree.leaves(t)) for t in fresh.values()) - len(renewed)
  logging.info("transfer from %s: kept %d leaves, re-initialised %d (%s)", source_name, kept,
               len(renewed), _short(renewed) or "none")
  return merged
