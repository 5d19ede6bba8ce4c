"""The configs shipped with tlflax, installed as `tlflax.configs`: `--config=NAME` loads
`NAME.py` from here (`--config=smoke`, `--config=cifar10_to_cifar100:val`)."""
