#!/usr/bin/env bash
# One device call for the engine figures (issue 5), e.g. from the repository root:
#   bash bench/gpu_engine.sh --shape llama-3.1-8b            (all parts, 1,000 requests)
# The device image lacks pydantic/pydantic-settings: carry them as wheels in .whl
# (device README) and they are installed first. Builds qinfer/_C.so unless present.
set -uo pipefail
source bench/device_env.sh
if [ ! -f qinfer/_C.so ]; then
  python3 -m qinfer.ops.build > "$OUT/build.log" 2>&1 || echo "qinfer._C build failed: Triton ops serve"
fi
python3 bench/bench_engine_gpu.py --out "$OUT" "$@" > "$OUT/engine.log" 2>&1
rc=$?
grep -v '^\s' "$OUT/engine.log" | tail -20
exit $rc
