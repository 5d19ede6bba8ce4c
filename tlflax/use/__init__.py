"""tlflax.use (its docstring and layer rules follow in the next commit)."""
