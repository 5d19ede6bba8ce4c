#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md, in one go on a machine with an NVIDIA GPU:
#   1. installs tlflax with the jax CUDA build that matches the driver (.[cuda12] or .[cuda13])
#      into its own venv (.venv-cuda12 / .venv-cuda13);
#   2. runs the smoke study (--mode=compare on configs/smoke.py);
#   3. runs one epoch of a CIFAR-shaped synthetic run (50,000 32x32 images, ResNet-18 width 64,
#      100 classes) in bfloat16 with batch 512, and prints its img/s (compilation excluded).
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

start=$(date +%s)
./launch.sh local --mode=compare --config=configs/smoke.py --workdir="$out/smoke"
echo "smoke compare: $(( $(date +%s) - start )) s wall-clock"

./launch.sh local --mode=scratch --config=configs/cifar10_to_cifar100.py --workdir="$out/bf16" \
  --config.target.dataset=synthetic100 --config.target.epochs=1 \
  --config.target.batch_size=512 --config.target.warmup_epochs=0 --config.model.dtype=bfloat16

"$TLFLAX_VENV/bin/python" - "$out" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
summary = json.loads((out / "bf16" / "scratch" / "summary.json").read_text())
record = summary["final"]
print(f"{summary['device_kind']} ({summary['backend']}, {summary['devices']} device(s)): "
      f"ResNet-18 CIFAR-shaped, bfloat16, batch 512: {record['img_per_s']:.0f} img/s, "
      f"epoch {record['epoch_s']:.1f} s, compile {summary['compile_s']:.1f} s")
for mode in ("pretrain", "scratch/seed_0", "transfer/seed_0"):
  s = json.loads((out / "smoke" / mode / "summary.json").read_text())
  print(f"smoke {mode}: {s['final']['img_per_s']:.0f} img/s, wall {s['wall_s']:.1f} s")
EOF
