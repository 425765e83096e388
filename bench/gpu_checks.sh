#!/usr/bin/env bash
# One device call: build qinfer/_C.so, run the GPU kernel tests, time the decode kernel.
#   bash bench/gpu_checks.sh [--sweep]      (writes logs and JSON under $OUT or bench/results)
set -uo pipefail
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
( time python3 -m qinfer.ops.build ) > "$OUT/build.log" 2>&1; echo "build rc=$?"; tail -5 "$OUT/build.log"
python3 -c "import qinfer.ops as o; print('ops on cuda:', o.implementations('cuda'))"
python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/gpu/test_kernels_gpu.py 2>&1 \
  | tee "$OUT/test_kernels_gpu.log" | tail -25
python3 bench/bench_attention.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_attention.log" | tail -15
