"""docs/config.md, generated from the shipped configs and the key tables:
`python -m tlflax.config > docs/config.md`."""

from tlflax.config import files
from tlflax.config.build import base_config
from tlflax.config.keys import BLOCKS, flat_keys


def markdown() -> str:
  """docs/config.md: the shipped configs, then every key of `base_config()` with its default
  and meaning."""
  lines = ["# Config reference", "",
           ("Generated from `configs/` and `tlflax/config/keys.py` by `python -m tlflax.config > "
           "docs/config.md` (a test fails when this file is stale). Defaults are those of "
           "`base_config()`, the "
           "seed experiment; the shipped configs in `configs/` change some of them. Override any "
           "key with `--config.KEY=VALUE`; `--mode=config` prints the resolved values."), "",
           "## Shipped configs", "",
           ("`--config=NAME` loads `configs/NAME.py` (shipped inside the package as "
            "`tlflax.configs`); `--config=NAME:ARG` passes ARG to its `get_config`, and only the "
            "arguments below are taken. More on each, and on writing your own: "
            "[configs.md](configs.md)."), "",
           "| `--config=` | what it is | argument |", "| --- | --- | --- |"]
  for name in files.named_configs():
    args = files.shipped_args(name)
    taken = "; ".join(f"`:{a}`: {meaning}" for a, meaning in args.items()) or "none"
    lines.append(f"| `{name}` | {files.summary(name)} | {taken} |")
  lines.append("")
  titles = {"": "Top level", "data": "`data`: where the splits live",
            "model": "`model`", "source": "`source`: the pretraining phase",
            "target": "`target`: the transfer (and scratch) phase",
            "transfer": "`transfer`: how the target starts from the source",
            "checkpoint": "`checkpoint`", "report": "`report`",
            "evaluate": "`evaluate`: --mode=evaluate", "predict": "`predict`: --mode=predict",
            "rank": "`rank`: --mode=rank, which source to start from",
            "track": "`track`: experiment tracking (Weights & Biases)"}
  base = base_config()
  flat = flat_keys(base)
  for block, title in titles.items():
    lines += [f"## {title}", "", "| key | default | meaning |", "| --- | --- | --- |"]
    for leaf, (_, meaning) in BLOCKS[block].items():
      key = f"{block}.{leaf}" if block else leaf
      default = base.arms.to_dict() if key == "arms" else flat.get(key)
      cells = (repr(default), meaning)
      shown, text = (c.replace("|", "\\|") for c in cells)
      lines.append(f"| `{key}` | `{shown}` | {text} |")
    lines.append("")
  return "\n".join(lines)

