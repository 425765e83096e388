#!/usr/bin/env bash
# One device call: build qinfer/_C.so, run the GPU kernel tests (and the engine's graph-vs-eager
# test: fused rotary+cache write and the one-launch decode inside CUDA graphs), time the decode kernel.
#   bash bench/gpu_checks.sh [--sweep]      (writes logs and JSON under $OUT or bench/results)
set -uo pipefail
source bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
( time python3 -m qinfer.ops.build ) > "$OUT/build.log" 2>&1; echo "build rc=$?"; tail -5 "$OUT/build.log"
python3 -c "import qinfer.ops as o; print('ops on cuda:', o.implementations('cuda'))"
python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/gpu/test_kernels_gpu.py \
  tests/gpu/test_cuda_graphs_gpu.py 2>&1 \
  | tee "$OUT/test_kernels_gpu.log" | tail -25
python3 bench/bench_attention.py --out "$OUT" "$@" 2>&1 | tee "$OUT/bench_attention.log" | tail -15
