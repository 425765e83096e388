"""The step's elementwise ops alone on a GPU: GB/s of silu_and_mul and fused_add_rms_norm against
copy bandwidth, for every implementation registered (cuda = qinfer._C, triton, torch).

    python bench/bench_elementwise.py [--rows 1,256,8192] [--out DIR]

Shapes: Llama-3.1-8B in bf16 (hidden 4,096; gate | up 2 x 14,336). Rows: 1 (batch-1 decode:
latency, not bandwidth), 256 (a full decode batch), 8,192 (a max_num_batched_tokens prefill
step). Bytes: what the op must read and write (silu_and_mul: 2I in, I out; fused_add_rms_norm:
x and residual in, both out, the weight). Times: medians of triton's do_bench, the outputs
checked against the torch reference. Prints a table; writes DIR/elementwise.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine_gpu import copy_bandwidth  # noqa: E402

from qinfer.ops import reference, registry  # noqa: E402

HIDDEN, INTER, DTYPE = 4096, 14336, torch.bfloat16


def implementations(op: str) -> dict:
    import qinfer.ops  # noqa: F401  (registers qinfer._C's ops and the Triton twins)
    return {name: fn for _, name, devices, fn in registry._IMPLS[op] if "cuda" in devices}


def cases(rows: int):
    """(op, bytes moved, make inputs, call(fn, inputs) -> output to check, reference output)."""
    x = torch.randn(rows, 2 * INTER, device="cuda", dtype=DTYPE)
    yield "silu_and_mul", x.numel() * 3 // 2 * 2, lambda: (x,), lambda fn, a: fn(*a), reference.silu_and_mul(x)
    h, r = torch.randn(rows, HIDDEN, device="cuda", dtype=DTYPE), torch.randn(rows, HIDDEN, device="cuda", dtype=DTYPE)
    w = torch.randn(HIDDEN, device="cuda", dtype=DTYPE)
    ref = reference.fused_add_rms_norm(h, r, w, 1e-5)[0]
    yield ("fused_add_rms_norm", (4 * h.numel() + HIDDEN) * 2, lambda: (h.clone(), r.clone()),
           lambda fn, a: fn(*a, w, 1e-5)[0], ref)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,256,8192")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args()
    bandwidth = copy_bandwidth()
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    print("| op | rows | impl | us | GB/s | % copy | max err |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    results = []
    for rows in map(int, args.rows.split(",")):
        for op, nbytes, make, call, ref in cases(rows):
            for impl, fn in implementations(op).items():
                inputs = make()
                err = (call(fn, inputs).float() - ref.float()).abs().max().item()
                inputs = make()    # the in-place op overwrote them; timing reruns it on the same
                us = triton.testing.do_bench(lambda: call(fn, inputs), warmup=25, rep=200,
                                             return_mode="median") * 1e3
                row = dict(op=op, rows=rows, impl=impl, us=round(us, 2), gb_s=round(nbytes / us / 1e3, 1),
                           pct_copy=round(100 * nbytes / (us * 1e-6) / bandwidth, 1), max_err=err)
                results.append(row)
                print(f"| {op} | {rows} | {impl} | {row['us']} | {row['gb_s']} | {row['pct_copy']}% | {err:.3g} |",
                      flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "elementwise.json").write_text(json.dumps({"copy_bandwidth": bandwidth, "rows": results}, indent=2))


if __name__ == "__main__":
    main()
