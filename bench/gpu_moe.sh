#!/usr/bin/env bash
# One device call for the MoE work (issue 16), from the repository root:
#   bash bench/gpu_moe.sh [--tests] [bench_moe.py args...]
# Installs carried wheels (.whl: pydantic for the engine), builds qinfer/_C.so unless present (a
# copy lands in $OUT so a later call can carry it), runs the MoE GPU tests with --tests, then
# bench/bench_moe.py with the remaining arguments.
set -uo pipefail
source bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,memory.used --format=csv
if [ ! -f qinfer/_C.so ]; then
  ( time python3 -m qinfer.ops.build ) > "$OUT/build.log" 2>&1; echo "build rc=$?"; tail -3 "$OUT/build.log"
  cp qinfer/_C.so "$OUT/" 2>/dev/null
fi
if [ "${1:-}" = "--tests" ]; then
  shift
  python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/gpu/test_moe_gpu.py 2>&1 \
    | tee "$OUT/test_moe_gpu.log" | tail -30
fi
python3 bench/bench_moe.py --out "$OUT" "$@" > "$OUT/bench_moe.log" 2>&1
rc=$?
grep -v '^{' "$OUT/bench_moe.log" | tail -40
exit $rc
