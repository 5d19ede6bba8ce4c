"""tlflax.config (split into keys, build and validate in the next commit)."""

from tlflax.config.keys import *  # noqa: F403
from tlflax.config.keys import _validate_phase  # noqa: F401
