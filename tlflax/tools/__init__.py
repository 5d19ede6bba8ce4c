"""Tools beside a run: the step benchmark (`bench`, `python -m tlflax.tools.bench`) and its
PyTorch reference (`torch_reference`, which imports only torch).

May import: every layer below `tlflax.main`.
"""
