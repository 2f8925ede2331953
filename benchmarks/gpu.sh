#!/usr/bin/env bash
# The GPU run in one call of at most 8 minutes (benchmarks/gpu.py says what it measures):
#   bash benchmarks/gpu.sh [OUT.json] [gpu.py options]
# Exit status: 0 done, 2 a bad argument or no MNIST, 3 no CUDA device, 124 cut at 8 minutes
# (the JSON then holds the parts that finished).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu.json}"
shift || true
python_bin="${PYTHON:-python}"
exec timeout --signal=INT --kill-after=20 480 "$python_bin" benchmarks/gpu.py --out "$out" "$@"
