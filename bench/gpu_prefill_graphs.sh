#!/usr/bin/env bash
# One device call for issue 13's mixed-step graphs and prefill (from the repository root):
#   bash bench/gpu_prefill_graphs.sh [BASELINE_ROOT] [extra bench_prefill_graphs.py args]
# Builds qinfer/_C.so while the prefill-attention sweep runs (bench_prefill_attention.py, against
# the kernels of BASELINE_ROOT if given), runs the GPU test suite, then the engine bench
# (bench_prefill_graphs.py) with the sweep's best prefill configuration. Logs and JSON in $OUT.
set -uo pipefail
BASELINE=${1:-}; shift || true
# the wheels may lie beside the checkout when it is a baseline's sibling
WHEELS=$([ ! -d .whl ] && [ -d ../.whl ] && echo ../.whl || echo .whl) source bench/device_env.sh
nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv,noheader
( python3 -m qinfer.ops.build > "$OUT/build.log" 2>&1; echo "build rc=$?" >> "$OUT/build.log" ) &
build=$!
timeout 150 python3 bench/bench_prefill_attention.py ${BASELINE:+--baseline "$BASELINE"} --out "$OUT" \
  > "$OUT/attention.log" 2>&1; echo "attention bench rc=$?"
wait $build; tail -1 "$OUT/build.log"
timeout 170 python3 -m pytest -q -m gpu -p no:cacheprovider tests/gpu > "$OUT/tests_gpu.log" 2>&1
echo "tests/gpu rc=$?"
cfg=(); [ -f "$OUT/prefill_cfg.json" ] && cfg=(--prefill-cfg "$OUT/prefill_cfg.json")
timeout 250 python3 bench/bench_prefill_graphs.py ${BASELINE:+--baseline "$BASELINE"} "${cfg[@]}" \
  --out "$OUT" "$@" > "$OUT/engine.log" 2>&1; echo "engine bench rc=$?"
echo "== attention"; grep -E "failed|best|baseline|sdpa" "$OUT/attention.log" | tail -24
echo "== tests"; grep -E "passed|failed|error|FAILED|ERROR" "$OUT/tests_gpu.log" | tail -12
echo "== engine"; sed -n '/^== /,$p' "$OUT/engine.log"; grep -E "Error|error" "$OUT/engine.log" | tail -5
