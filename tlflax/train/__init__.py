"""The train layer, by the level each module works at:
  one step     `steps` (train / eval steps per shard), `probe` (the cached linear probe's steps
               and features), `optim` (schedule, optimizer, accumulation), `transfer` (freezing
               and fine-tuning rules over parameter paths)
  one epoch    `epochs` (the policy in force, its compiled steps, an epoch's steps),
               `evaluation` (every evaluation example once)
  one run      `spec` (RunSpec, Plan), `run` (`fit`: a run start to end), `monitor` (metrics,
               TensorBoard, progress), `tracking` (Weights & Biases), `preemption` (stop requests)
  one phase    `phase` (a run in its folder: reused, resumed or trained), `source` (a transfer
               run's source), `checks` (a config checked against the model before anything runs)

May import: everything below it (`errors`, `parallel`, `config`, `io`, `data`, `models`).
"""
