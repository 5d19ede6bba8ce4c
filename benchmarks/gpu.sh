#!/usr/bin/env bash
# GPU figures for docs/benchmarks.md. Two ways:
#
#   benchmarks/gpu.sh --here OUT_DIR [--rehearse] [--budget_s=S] [--parts=...] [--work=DIR]
#     With the current interpreter as it is ($PYTHON, default python3): no venv, no install,
#     tlflax from this working tree. The wheels in $TLFLAX_WHEELS (default .whl/, made by
#     ../shared/device/wheels.sh: ml-collections, tensorboardX) are installed into a target
#     folder put first on PYTHONPATH (the interpreter brings pytest for the tests part). Then
#     benchmarks/device_figures.py runs its parts (see its docstring): the bench at batch 512 in
#     bfloat16 (full, stages:2, cached probe, eval), the smoke study on the device with its frozen
#     layers checked bitwise, a slice of the test suite under this jax, one synthetic CIFAR-size
#     epoch of the pretraining, scratch, full transfer, stages:2 and the cached probe (and the
#     seed's whole study projected from them), the bench at batch 1024; it writes figures.json,
#     figures.txt, bench_*.json, smoke_report.md and log.txt into OUT_DIR within --budget_s
#     (default 420) seconds. This is the mode for a lent GPU machine without network.
#     --rehearse runs the same on this machine's CPU with tiny sizes (TensorFlow hidden, as on
#     the device).
#
#   benchmarks/gpu.sh [OUT_DIR [OPTIONS]]
#     On a GPU machine with network: installs tlflax with the jax CUDA build that matches the
#     driver (.[cuda12] or .[cuda13]) and pytest into its own venv (.venv-cuda12 / .venv-cuda13),
#     then the same parts with that venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
  echo "gpu.sh: error: $*" >&2
  exit 2
}

if [ "${1:-}" = "--here" ]; then
  shift
  [ $# -ge 1 ] || die "usage: benchmarks/gpu.sh --here OUT_DIR [--rehearse] [--budget_s=S]"
  out=$1
  case "$out" in
    -*) die "$out where the output folder belongs: use benchmarks/gpu.sh --here OUT_DIR [--rehearse] [--budget_s=S]" ;;
  esac
  shift
  py=${PYTHON:-python3}
  wheels=${TLFLAX_WHEELS:-.whl}
  site=$(mktemp -d)/site
  shopt -s nullglob
  carried=("$wheels"/*.whl)
  if [ ${#carried[@]} -gt 0 ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "${carried[@]}"
    echo "gpu.sh: installed ${#carried[@]} carried wheel(s) into $site" >&2
  fi
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  exec "$py" benchmarks/device_figures.py --out="$out" "$@"
fi

case "${1:-}" in
  -*) die "unknown option $1: use benchmarks/gpu.sh --here OUT_DIR [--rehearse] [--budget_s=S], or benchmarks/gpu.sh [OUT_DIR]" ;;
esac
command -v nvidia-smi >/dev/null 2>&1 || die "nvidia-smi not found: run on a GPU machine"
cuda=$(nvidia-smi | sed -n 's/.*CUDA Version: \([0-9]*\).*/\1/p' | head -1)
accel=cuda12
if [ "${cuda:-0}" -ge 13 ]; then accel=cuda13; fi
export TLFLAX_ACCEL=$accel TLFLAX_VENV=.venv-$accel
out=${1:-$(mktemp -d)}
[ $# -ge 1 ] && shift
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "driver supports CUDA $cuda: installing tlflax[$accel] and pytest into $TLFLAX_VENV"
./launch.sh install
"$TLFLAX_VENV/bin/python" -m pip install -q "pytest>=8"  # the `tests` part
exec "$TLFLAX_VENV/bin/python" benchmarks/device_figures.py --out="$out" "$@"
