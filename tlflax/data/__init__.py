"""The data layer: datasets read from tfds, image folders or made up (`sources`), a training
phase's task: splits, classes, statistics, label budgets (`task`), on-device batches and
augmentation (`batches`), and where a step's batches come from: the devices or host memory
(`feeds`).

May import: `tlflax.errors`, `tlflax.parallel`, `tlflax.config`.
"""
