"""Figures written as PNG files into a workdir (local or on a store): matplotlib on its file-only
backend, imported when the first figure is drawn (a training run never draws one)."""

import io

from tlflax.io import storage


def pyplot():
  """`matplotlib.pyplot` on the Agg backend (no display needed)."""
  # Lazily: matplotlib costs about half a second to import, and only reports draw figures.
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def write_png(fig, path: str) -> None:
  """Writes `fig` as a PNG at `path`, local or on a store (`storage.write_bytes`), and closes it."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  pyplot().close(fig)
  storage.write_bytes(path, buffer.getvalue())
