"""The io layer: every file of a workdir, local, `gs://` or `s3://` (`storage`, `s3`), figures as
PNGs (`figures`), a run's orbax checkpoints (`checkpoint`), and run folders: their identity,
reuse and refusal (`rundir`).

May import: `tlflax.errors`, `tlflax.parallel`. Knows nothing of models, data or training: what a
run folder holds is decided above and written through here.
"""
