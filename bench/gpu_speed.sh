#!/usr/bin/env bash
# One device call for issue 13's sampler and sized-defaults figures, from the repository root:
#   bash bench/gpu_speed.sh          (OUT: where results go; JOBS: varied jobs per run, default 500)
# Builds qinfer/_C.so in the background meanwhile; then the sampler's GPU tests, the sampler
# bench (sort vs threshold), and the varied workload in-process on the 8B shape at the engine's
# defaults, once per sampler. Fleet mode only where a redis-server exists.
set -uo pipefail
source bench/device_env.sh
step() { echo "== $1 (rc $2, at ${SECONDS}s)"; }
(python3 -m qinfer.ops.build > "$OUT/build.log" 2>&1; echo "rc $?" >> "$OUT/build.log") &
build=$!
timeout 120 python3 -m pytest -q -x -m gpu -p no:cacheprovider tests/gpu/test_sampler_gpu.py > "$OUT/test_sampler_gpu.log" 2>&1
step "sampler GPU tests: $(tail -1 "$OUT/test_sampler_gpu.log")" $?
timeout 120 python3 bench/bench_sampler.py --out "$OUT" > "$OUT/bench_sampler.log" 2>&1
step "sampler bench" $?
grep -v '^\s' "$OUT/bench_sampler.log" | tail -40
wait $build
step "build: $(tail -1 "$OUT/build.log")" 0
modes=inprocess
if command -v redis-server > /dev/null; then modes=inprocess,fleet; else echo "no redis-server here: fleet mode not run"; fi
timeout "${VARIED_TIMEOUT:-200}" python3 bench/bench_varied.py --device cuda --jobs "${JOBS:-500}" --modes "$modes" \
  --out "$OUT" > "$OUT/bench_varied.log" 2>&1
step "varied" $?
tail -12 "$OUT/bench_varied.log"
