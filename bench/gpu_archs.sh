#!/usr/bin/env bash
# One device call for the architectures of issue 14: the GPU sliding-window kernel tests, the
# Qwen3 / Mistral / Phi-3 float32 engine-vs-transformers test, then the throughput workload
# (temperature 1.0, ignore_eos, 512/256) on random bf16 weights of Qwen3-8B and Llama-3.1-8B.
#   bash bench/gpu_archs.sh [NUM_REQUESTS]     (default 1000; logs and JSON under $OUT)
set -uo pipefail
source bench/device_env.sh
NUM_REQUESTS=${1:-1000}
python3 -m pytest -q -m gpu --noconftest -p no:cacheprovider tests/gpu/test_sliding_window_gpu.py \
  tests/gpu/test_archs_gpu.py 2>&1 | tee "$OUT/test_archs_gpu.log" | tail -8
for shape in qwen3-8b llama-3.1-8b; do
  python3 bench/bench_engine_gpu.py --shape "$shape" --parts throughput --num-requests "$NUM_REQUESTS" \
    --out "$OUT" > "$OUT/engine_$shape.log" 2>&1
  echo "$shape rc=$?"; grep -E '^(==|throughput)' "$OUT/engine_$shape.log"
done
