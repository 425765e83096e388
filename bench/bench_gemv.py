"""Decode-size linear layers on the GPU: csrc/gemv.cu (one row) vs cuBLAS (F.linear), one command:

    python bench/bench_gemv.py [--tokens 1 2 4 8] [--out DIR]

Llama-3.1-8B weight shapes (fused qkv, o, fused gate_up, down, LM head), bf16, x of M rows.
Each timed call reads another copy of the weight (>= 512 MB rotated, L2 is 60 MB) and the
calls are replayed from a CUDA graph, as in a decode step. Figures: microseconds per call,
% of the measured copy bandwidth (weight bytes / time); the GEMV at one row, checked against a
float32 product first; gate_up at one row also as the MLP runs it, the GEMV then silu_and_mul
against the gated GEMV that does both. The summary adds up an 8B decode step's linear layers.
Prints a table and writes bench_gemv.json under --out.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

SHAPES = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
          "lm_head": (128256, 4096)}
ROTATION_BYTES = 512 << 20


def copy_bandwidth() -> float:
    src = torch.randn(1 << 29, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def graph_time_us(calls) -> float:
    """Microseconds per call of `calls` (zero-argument callables), replayed from one graph."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for call in calls:   # warm-up outside the capture (cuBLAS workspace, lazy init)
            call()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    ms = triton.testing.do_bench(graph.replay, warmup=20, rep=200, return_mode="median")
    return 1e3 * ms / len(calls)


def check(gemv, x: torch.Tensor, w: torch.Tensor) -> float:
    """Max error of the GEMV against a float32 product, relative to the largest output."""
    ref = x.float() @ w.float().T
    out = gemv(x, w, None).float()
    return ((out - ref).abs().max() / ref.abs().max()).item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args()
    from qinfer.ops import compiled

    assert compiled.load() and hasattr(torch.ops.qinfer, "gemv"), "build qinfer/_C.so first"
    gemv = torch.ops.qinfer.gemv
    bandwidth = copy_bandwidth()
    rows = []
    for name, (n, k) in SHAPES.items():
        nbytes = n * k * 2
        weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
                   for _ in range(max(2, -(-ROTATION_BYTES // nbytes)))]
        for m in args.tokens:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            row = dict(layer=name, n=n, k=k, tokens=m, weight_mb=nbytes / 1e6,
                       cublas_us=graph_time_us([lambda w=w: F.linear(x, w) for w in weights]))
            if m == 1:
                row["max_err"] = check(gemv, x, weights[0])
                row["gemv_us"] = graph_time_us([lambda w=w: gemv(x, w, None) for w in weights])
                if name == "gate_up":   # the MLP's activation: in the GEMV, or a launch after it
                    ops = torch.ops.qinfer
                    row["gemv_then_silu_us"] = graph_time_us(
                        [lambda w=w: ops.silu_and_mul(gemv(x, w, None)) for w in weights])
                    row["gemv_silu_fused_us"] = graph_time_us(
                        [lambda w=w: ops.gemv_silu_and_mul(x, w, None) for w in weights])
            rows.append(row)
            pct = lambda us: 100 * nbytes / (us * 1e-6) / bandwidth   # noqa: E731
            print(f"{name:>8} N={n:<6} K={k:<5} M={m:<2} " + "  ".join(
                f"{key[:-3]} {v:7.1f} us ({pct(v):3.0f}%)" for key, v in row.items() if key.endswith("_us"))
                + (f"  gemv max err {row['max_err']:.1e}" if "max_err" in row else ""), flush=True)
        del weights
        torch.cuda.empty_cache()
    # One decode layer (qkv + o + gate_up + down) x 32 + LM head at each M: the linear layers'
    # share of an 8B decode step, cuBLAS vs the faster of the two per layer, against the floor.
    per_m = {}
    for m in args.tokens:
        sel = [r for r in rows if r["tokens"] == m]
        weight = {r["layer"]: (32 if r["layer"] != "lm_head" else 1) for r in sel}
        total = lambda key_fn: sum(weight[r["layer"]] * key_fn(r) for r in sel) / 1e3   # noqa: E731
        floor = sum(weight[r["layer"]] * r["weight_mb"] * 1e6 for r in sel) / bandwidth * 1e3
        gemv_ms = total(lambda r: min(r["cublas_us"], r.get("gemv_us", r["cublas_us"])))
        per_m[m] = dict(cublas_ms=total(lambda r: r["cublas_us"]), best_gemv_ms=gemv_ms, floor_ms=floor)
        print(f"8B linears, M={m}: cuBLAS {per_m[m]['cublas_ms']:.3f} ms, faster of GEMV/cuBLAS per layer {gemv_ms:.3f} ms, "
              f"floor {floor:.3f} ms (copy {bandwidth / 1e12:.2f} TB/s)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gemv.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(),
                                                         copy_bytes_s=bandwidth, rows=rows, per_tokens=per_m),
                                                    indent=1))


if __name__ == "__main__":
    main()
