#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md, in one go on a machine with an NVIDIA GPU:
#   1. installs tlflax with the jax CUDA build that matches the driver (.[cuda12] or .[cuda13])
#      into its own venv (.venv-cuda12 / .venv-cuda13);
#   2. runs `python -m tlflax.bench` (full, stages:2, cached linear probe, eval) on the CIFAR
#      ResNet-18 in bfloat16 at batch 512 and 1024: img/s, TFLOP/s, MFU, compile, start-up;
#   3. runs one CIFAR-sized synthetic epoch (50,000 32x32 images, ResNet-18 width 64, bfloat16,
#      batch 512) of scratch, full transfer, transfer with stages:2 frozen, and the cached probe,
#      after a one-epoch synthetic10 pretraining, and prints seconds per epoch and img/s.
# Usage: benchmarks/gpu.sh [OUT_DIR]   (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null 2>&1 || { echo "gpu.sh: error: nvidia-smi not found: run on a GPU machine" >&2; exit 2; }
cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
accel=cuda12
if [ "${cuda:-0}" -ge 13 ]; then accel=cuda13; fi
export TLFLAX_ACCEL=$accel TLFLAX_VENV=.venv-$accel
out=${1:-$(mktemp -d)}
mkdir -p "$out"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "driver supports CUDA $cuda: installing tlflax[$accel] into $TLFLAX_VENV"
./launch.sh install
py=$TLFLAX_VENV/bin/python

for batch in 512 1024; do
  "$py" -m tlflax.bench --config=configs/cifar10_to_cifar100.py --config.model.dtype=bfloat16 \
    --config.target.batch_size=$batch --config.target.eval_batch_size=1024 \
    --json="$out/bench_$batch.json"
done

cifar=(--config=configs/cifar10_to_cifar100.py --config.model.dtype=bfloat16
       --config.source.dataset=synthetic10 --config.source.epochs=1
       --config.target.dataset=synthetic100 --config.target.epochs=1
       --config.source.batch_size=512 --config.target.batch_size=512
       --config.source.warmup_epochs=0 --config.target.warmup_epochs=0)
./launch.sh local --mode=scratch "${cifar[@]}" --workdir="$out/epoch"
./launch.sh local --mode=transfer "${cifar[@]}" --workdir="$out/epoch"
for freeze in stages:2 backbone; do
  ./launch.sh local --mode=transfer "${cifar[@]}" --workdir="$out/epoch_${freeze/:/}" \
    --config.transfer.freeze=$freeze --config.transfer.init_from="$out/epoch/pretrain"
done

"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for batch in (512, 1024):
  b = json.loads((out / f"bench_{batch}.json").read_text())
  print(f"bench {b['device']} x{b['device_count']}, {b['dtype']}, batch {batch}: start-up "
        f"{b['startup_cold_s']:.1f}s cold / {b['startup_warm_s']:.1f}s warm")
  for r in b["results"]:
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
    print(f"  {r['variant']}: {r['img_per_s']:.0f} img/s, {r['tflops']:.1f} TFLOP/s, MFU {mfu}, "
          f"compile {r['compile_s']:.1f}s")
for name, run in (("scratch", "epoch/scratch"), ("transfer", "epoch/transfer"),
                  ("transfer stages:2", "epoch_stages2/transfer"),
                  ("cached probe", "epoch_backbone/transfer")):
  s = json.loads((out / run / "summary.json").read_text())
  r = s["final"]
  print(f"epoch {name}: {r['epoch_s']:.1f} s, {r['img_per_s']:.0f} img/s (compile "
        f"{s['compile_s']:.1f}s, features {s.get('features_s', 0):.1f}s)")
PY
