"""`python -m tlflax.config > docs/config.md`: the config reference (every key, its default and
meaning), generated from the key tables."""

import sys

from tlflax.config import reference

if sys.argv[1:] in (["-h"], ["--help"]):
  print(__doc__)
elif sys.argv[1:]:
  print("usage: python -m tlflax.config > docs/config.md", file=sys.stderr)
  sys.exit(2)
else:
  print(reference.markdown(), end="")
