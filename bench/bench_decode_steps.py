"""Decode steps on a GPU against their floor, by where their time goes (issue 13), one command:

    python bench/bench_decode_steps.py [--points 1x512:greedy,64x1400:top_p,...] [--steps 40]
        [--parts steps,gemm] [--out DIR]
    python bench/bench_decode_steps.py --device cpu --points 2x32:top_p --steps 3    (smoke: the tiny
        demo model, CPU ops; no floors, no gemm part)

The issue's engine (bench_prefill_graphs.py's: random-weight Llama-3.1-8B shape in bf16, the
weights drawn in place on the GPU; max_num_seqs 256, max_num_batched_tokens 8192,
max_model_len 4096, prefix caching, async scheduling, CUDA graphs). Parts:
  steps  per point BxC:SAMPLING, B requests of C unique prompt tokens are prefilled, then
         --steps decode steps are timed (wall ms per step, the engine's own loop) and as many
         again run under torch.profiler: GPU time per step by kernel class and the top kernels.
         SAMPLING: greedy, t1 (temperature 1.0) or top_p (temperature 0.8, top_p 0.95: the
         varied workload's). The floor: weight bytes + the KV bytes the step reads at the
         measured copy bandwidth, and the linear layers' FLOPs at the measured matmul rate.
  gemm   the model's linear layers alone (qinfer.ops.linear: cuBLAS, or the GEMV at one row) at
         M rows: us against max(bytes / copy bandwidth, FLOPs / matmul rate); weights rotated
         past L2, calls replayed from a CUDA graph.
Prints tables; writes bench_decode_steps.json to --out ($OUT on the device machine).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_gpu import copy_bandwidth, hf_config, matmul_rate, random_prompts, weight_bytes  # noqa: E402
from bench_prefill_graphs import SHAPE, draw_weights, model_dir  # noqa: E402

from qinfer.sampling_params import SamplingParams  # noqa: E402

SAMPLINGS = {"greedy": dict(temperature=0.0), "t1": dict(temperature=1.0),
             "top_p": dict(temperature=0.8, top_p=0.95)}
DEFAULT_POINTS = "1x512:greedy,1x512:top_p,16x1500:top_p,64x1400:top_p,128x1200:top_p,256x640:t1,240x1100:top_p"
KERNEL_CLASSES = (  # (class, substrings of kernel names), first match wins
    ("attention", ("_decode_kernel", "_prefill_kernel")),
    ("sampler mask", ("_top_k_top_p",)),
    ("sampler other", ("exponential", "argmax", "divfunctor", "log_kernel", "logfunctor", "sub_kernel",
                       "cunn_softmax", "distribution")),
    ("gemm", ("gemm", "nvjet", "cutlass", "xmma", "gemv", "splitk", "sm90", "linear_pointwise", "linear_tiled", "aten::mm")),
    ("rms norm", ("norm",)),
    ("rotary + cache write", ("rotary", "cache")),
    ("silu_and_mul", ("silu", "act_and_mul")),
)
LINEARS = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
           "lm_head": (128256, 4096)}


def kernel_class(name: str) -> str:
    lowered = name.lower()
    return next((cls for cls, keys in KERNEL_CLASSES if any(k in lowered for k in keys)), "other")


def make_llm(device: str):
    from qinfer.llm import LLM

    if device == "cpu":
        from qinfer.testing.demo_model import make_demo_model
        return LLM(str(make_demo_model()), device="cpu", max_num_seqs=256, max_num_batched_tokens=8192)
    from qinfer.executor import model_runner
    model_runner.load_weights = draw_weights
    return LLM(str(model_dir(Path(f"/tmp/qinfer-models/{SHAPE}-drawn"))), device="cuda", dtype="bfloat16",
               max_num_seqs=256, max_num_batched_tokens=8192, max_model_len=4096, enable_prefix_caching=True)


def parse_point(text: str) -> tuple[int, int, str]:
    shape, sampling = text.split(":")
    batch, ctx = shape.split("x")
    return int(batch), int(ctx), sampling


# ---- steps -----------------------------------------------------------------------------------

def decode_only_steps(engine, batch: int, ctx: int, sampling: str, label: str, steps: int) -> None:
    """Admit `batch` requests and step until every one of them decodes (steps of `batch` tokens)."""
    params = SamplingParams(max_tokens=2 * steps + 64, ignore_eos=True, seed=None, **SAMPLINGS[sampling])
    for i, prompt in enumerate(random_prompts(batch, ctx, seed=sum(map(ord, label)), vocab=engine.vocab_size)):
        engine.add_request(f"{label}-{i}", prompt_token_ids=prompt, sampling_params=params)
    for _ in range(10_000):
        before = engine._num_scheduled_tokens
        engine.step()
        if engine._num_scheduled_tokens - before == batch:
            return
    raise RuntimeError(f"{label}: the batch never reached decode-only steps")


def profile_kernels(engine, steps: int, on_gpu: bool) -> dict:
    """Per step: GPU kernel time by class on a GPU; on the CPU, the ops' own CPU time."""
    from torch.profiler import ProfilerActivity, profile

    synchronize()
    with profile(activities=[ProfilerActivity.CUDA if on_gpu else ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            engine.step()
        synchronize()
    kernels: dict[str, float] = {}
    for event in prof.key_averages():
        if on_gpu:
            us = getattr(event, "self_device_time_total", None)
            us = us if us is not None else getattr(event, "self_cuda_time_total", 0)
        else:
            us = event.self_cpu_time_total
        if us > 0:
            kernels[event.key] = kernels.get(event.key, 0.0) + us / 1e3 / steps
    classes: dict[str, float] = {}
    for name, ms in kernels.items():
        classes[kernel_class(name)] = classes.get(kernel_class(name), 0.0) + ms
    top = sorted(kernels.items(), key=lambda kv: -kv[1])[:14]
    return dict(kernel_ms_per_step=sum(classes.values()), classes_ms=classes,
                top_kernels=[(name[:110], ms, kernel_class(name)) for name, ms in top])


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def floors(cfg: dict, batch: int, ctx: int, ceilings: dict) -> dict:
    kv_bytes_per_token = 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * cfg["head_dim"] * 2
    kv_bytes = batch * (ctx + 0.5) * kv_bytes_per_token
    matmul_params = weight_bytes(cfg) / 2 - cfg["vocab_size"] * cfg["hidden_size"]   # the embedding is a lookup
    bytes_ms = 1e3 * (weight_bytes(cfg) + kv_bytes) / ceilings["copy_bytes_s"]
    gemm_ms = 1e3 * 2 * matmul_params * batch / ceilings["matmul_flop_s"]
    return dict(kv_gb=kv_bytes / 1e9, bytes_floor_ms=bytes_ms, gemm_compute_ms=gemm_ms,
                attention_floor_ms=1e3 * kv_bytes / ceilings["copy_bytes_s"])


def run_steps(llm, args, ceilings: dict) -> list[dict]:
    engine, rows, on_gpu = llm.engine, [], args.device == "cuda"
    for point in args.points.split(","):
        batch, ctx, sampling = parse_point(point)
        label = point.replace(":", "_")
        try:
            decode_only_steps(engine, batch, ctx, sampling, label, args.steps)
            for _ in range(3):
                engine.step()
            synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                engine.step()
            synchronize()
            row = dict(point=point, batch=batch, ctx=ctx, sampling=sampling,
                       wall_ms_per_step=1e3 * (time.perf_counter() - start) / args.steps,
                       **(floors(hf_config(SHAPE), batch, ctx + args.steps, ceilings) if on_gpu else {}),
                       **profile_kernels(engine, args.steps, on_gpu))
        except Exception:   # one device call runs every point: a failing one must not cost the others
            row = dict(point=point, error=traceback.format_exc())
            print(row["error"], flush=True)
        engine.abort_request([f"{label}-{i}" for i in range(batch)])
        while engine.has_unfinished_requests():
            engine.step()
        rows.append(row)
        print_step_row(row)
    return rows


def print_step_row(row: dict) -> None:
    if "error" in row:
        return
    classes = ", ".join(f"{k} {v:.2f}" for k, v in sorted(row["classes_ms"].items(), key=lambda kv: -kv[1]))
    floor = (f" (bytes floor {row['bytes_floor_ms']:.2f} ms = weights + {row['kv_gb']:.1f} GB of KV; linear FLOPs at "
             f"the matmul rate {row['gemm_compute_ms']:.2f} ms)" if "bytes_floor_ms" in row else "")
    print(f"{row['point']:>16}: {row['wall_ms_per_step']:.2f} ms/step wall, {row['kernel_ms_per_step']:.2f} ms "
          f"of kernels{floor} | {classes}", flush=True)
    for name, ms, cls in row["top_kernels"][:8]:
        print(f"{'':>18}{ms:8.3f} ms  [{cls}] {name}")


# ---- gemm ------------------------------------------------------------------------------------

def time_linear(rows: int, n: int, k: int, copies: int = 4) -> float:
    """us per qinfer.ops.linear call (bf16), weights rotated over `copies` (past L2), graph replay."""
    from qinfer import ops

    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(copies)]
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    for w in weights:
        ops.linear(x, w)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for w in weights:
            ops.linear(x, w)
    ms = triton.testing.do_bench(graph.replay, warmup=20, rep=200, return_mode="median")
    return 1e3 * ms / copies


def run_gemm(llm, args, ceilings: dict) -> list[dict]:
    rows = []
    for m in (int(v) for v in args.gemm_rows.split(",")):
        for name, (n, k) in LINEARS.items():
            us = time_linear(m, n, k)
            floor_us = 1e6 * max(2 * (n * k + m * (n + k)) / ceilings["copy_bytes_s"],
                                 2 * m * n * k / ceilings["matmul_flop_s"])
            rows.append(dict(rows=m, layer=name, n=n, k=k, us=us, floor_us=floor_us, pct_of_floor=100 * floor_us / us))
    return rows


def print_gemm(rows: list[dict]) -> None:
    layers = list(LINEARS)
    print("\nlinear layers alone: us (% of the floor max(bytes/bw, FLOPs/matmul rate))")
    print(f"{'rows':>6} | " + " | ".join(f"{name:>16}" for name in layers))
    for m in sorted({r["rows"] for r in rows}):
        cells = {r["layer"]: r for r in rows if r["rows"] == m}
        print(f"{m:>6} | " + " | ".join(f"{cells[n]['us']:8.1f} ({cells[n]['pct_of_floor']:3.0f}%)" for n in layers))


# ---- driver ----------------------------------------------------------------------------------

def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--parts", default="steps,gemm")
    p.add_argument("--points", default=DEFAULT_POINTS)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--gemm-rows", default="1,2,8,16,32,64,128,256")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    ceilings = {}
    if args.device == "cuda":
        ceilings = dict(copy_bytes_s=copy_bandwidth(), matmul_flop_s=matmul_rate())
        print(f"copy {ceilings['copy_bytes_s'] / 1e12:.2f} TB/s, matmul {ceilings['matmul_flop_s'] / 1e12:.0f} "
              "TFLOP/s", flush=True)
    start = time.perf_counter()
    llm = make_llm(args.device)
    results = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", args=vars(args),
                   ceilings=ceilings, engine_start_s=time.perf_counter() - start)
    parts = args.parts.split(",")
    if "steps" in parts:
        results["steps"] = run_steps(llm, args, ceilings)
    if "gemm" in parts and args.device == "cuda":
        results["gemm"] = run_gemm(llm, args, ceilings)
        print_gemm(results["gemm"])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_decode_steps.json").write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
