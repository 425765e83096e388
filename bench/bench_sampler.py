"""top-k / top-p / min-p: the sort of the whole vocabulary (the torch twin) vs the Triton
threshold search, and the whole Sampler with each (issue 13).

    python bench/bench_sampler.py [--device cuda] [--batches 1,64,256,1024] [--vocab 128256] [--out DIR]
    python bench/bench_sampler.py --device cpu --batches 4 --vocab 2000          (smoke: torch only)

Rows of logits like a random-weight 8B model's after temperature 0.8 ("flat", N(0, 1.6)) or
a trained model's ("peaked", N(0, 4)). Each timed call divides by the temperature (the
sampler's fresh float32 copy, which the kernel then masks in place) and masks; "sampler" is
Sampler.__call__ (mask, exponential draw, argmax). Median of triton's do_bench on a GPU,
best of repeats with perf_counter on the CPU. The kernel's launch shapes (block, pivots,
warps, programs per launch, which set how many programs share a row) are swept at top_p
0.95 for each batch. Prints tables; writes bench_sampler.json.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from qinfer.contracts.sampling_metadata import SamplingMetadata
from qinfer.executor.sampler import Sampler
from qinfer.ops.reference import top_k_top_p_min_p as sort_twin

SETTINGS = {"top_p 0.95": dict(top_p=0.95), "top_k 50": dict(top_k=50), "min_p 0.05": dict(min_p=0.05),
            "top_k 50 + top_p 0.9 + min_p 0.02": dict(top_k=50, top_p=0.9, min_p=0.02)}
SPREAD = {"flat": 1.6, "peaked": 4.0}
SWEEP = [dict(block=b, num_pivots=p, num_warps=w, programs=n) for b, p, w, n in
         ((1024, 8, 4, 512), (1024, 8, 4, 1024), (1024, 8, 4, 256), (512, 8, 4, 512), (1024, 8, 8, 512),
          (2048, 8, 8, 512), (1024, 16, 4, 512), (1024, 4, 4, 512), (2048, 8, 16, 132))]


def per_row(settings: dict, rows: int, device) -> dict:
    dtypes = {"top_k": torch.long}
    return {k: torch.full((rows,), v, dtype=dtypes.get(k, torch.float32), device=device) for k, v in settings.items()}


def timer(device: str, repeats: int):
    if device == "cuda":
        import triton

        return lambda fn: 1e3 * triton.testing.do_bench(fn, warmup=10, rep=repeats * 20, return_mode="median")

    def best_us(fn):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return 1e6 * min(times)
    return best_us


def mask_impls(device: str) -> dict:
    impls = {"sort": sort_twin}
    if device == "cuda":
        from qinfer.ops.sampling_triton import top_k_top_p_min_p_triton
        impls["threshold"] = top_k_top_p_min_p_triton
    return impls


def time_masks(args, time_us) -> list[dict]:
    rows_out = []
    temperature = 0.8
    for batch in args.batches:
        for spread_name, spread in SPREAD.items():
            logits = torch.randn(batch, args.vocab, device=args.device) * spread * temperature
            for name, settings in SETTINGS.items():
                kw = per_row(settings, batch, args.device)
                row = dict(batch=batch, logits=spread_name, setting=name)
                for impl_name, impl in mask_impls(args.device).items():
                    row[f"{impl_name}_us"] = time_us(lambda: impl(logits / temperature, kw.get("top_k"),
                                                                  kw.get("top_p"), kw.get("min_p")))
                rows_out.append(row)
    return rows_out


def time_samplers(args, time_us) -> list[dict]:
    from qinfer import ops

    rows_out = []
    for batch in args.batches:
        logits = torch.randn(batch, args.vocab, device=args.device) * SPREAD["flat"] * 0.8
        md = SamplingMetadata(temperature=torch.full((batch,), 0.8, device=args.device), all_greedy=False,
                              all_random=True, top_p=torch.full((batch,), 0.95, device=args.device))
        sampler = Sampler(torch.device(args.device), 0)
        row = dict(batch=batch, setting="temperature 0.8, top_p 0.95")
        for impl_name, impl in (("sort", "torch"), ("threshold", None)):
            ops.use_implementation("top_k_top_p_min_p", impl)
            row[f"{impl_name}_impl"] = ops.implementations(args.device)["top_k_top_p_min_p"]
            row[f"{impl_name}_us"] = time_us(lambda: sampler(logits, md))
        ops.use_implementation("top_k_top_p_min_p", None)
        rows_out.append(row)
    return rows_out


def sweep_configs(args, time_us) -> list[dict]:
    from qinfer.ops import sampling_triton

    rows_out, default = [], dict(sampling_triton.CONFIG)
    for batch in args.batches:
        logits = torch.randn(batch, args.vocab, device="cuda") * SPREAD["flat"] * 0.8
        top_p = torch.full((batch,), 0.95, device="cuda")
        for cfg in SWEEP:
            sampling_triton.CONFIG.update(cfg)
            try:
                us = time_us(lambda: sampling_triton.top_k_top_p_min_p_triton(logits / 0.8, None, top_p, None))
            finally:
                sampling_triton.CONFIG.update(default)
            rows_out.append(dict(batch=batch, **cfg, us=us))
    return rows_out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--batches", default="1,64,256,1024")
    p.add_argument("--vocab", type=int, default=128256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-sweep", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    time_us = timer(args.device, args.repeats)
    results = dict(device=torch.cuda.get_device_name() if args.device == "cuda" else "cpu", vocab=args.vocab,
                   masks=time_masks(args, time_us), samplers=time_samplers(args, time_us))
    if args.device == "cuda" and not args.no_sweep:
        results["sweep_top_p"] = sweep_configs(args, time_us)
    if args.device == "cuda":
        from kernel_registers import compiled_variants

        from qinfer.ops import sampling_triton
        results["compiled_variants"] = compiled_variants(sampling_triton._top_k_top_p_min_p_kernel)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_sampler.json").write_text(json.dumps(results, indent=1))
    report(results)
    return results


def report(r: dict) -> None:
    has_threshold = any("threshold_us" in row for row in r["masks"])
    print(f"== {r['device']}, vocab {r['vocab']}: divide by temperature + mask (us)")
    print("| batch | logits | setting | sort | threshold | speed-up |\n|---:|---|---|---:|---:|---:|")
    for row in r["masks"]:
        t = row.get("threshold_us")
        print(f"| {row['batch']} | {row['logits']} | {row['setting']} | {row['sort_us']:.0f} | "
              + (f"{t:.0f} | {row['sort_us'] / t:.1f}x |" if has_threshold else "- | - |"))
    print("\nwhole Sampler (us)\n| batch | sort | threshold |\n|---:|---:|---:|")
    for row in r["samplers"]:
        print(f"| {row['batch']} | {row['sort_us']:.0f} ({row['sort_impl']}) | "
              f"{row['threshold_us']:.0f} ({row['threshold_impl']}) |")
    if "compiled_variants" in r:
        from kernel_registers import describe
        print("\n" + describe("_top_k_top_p_min_p_kernel", r["compiled_variants"]))
    if "sweep_top_p" in r:
        print("\nkernel launch shapes, top_p 0.95 (us; divide by temperature included)")
        shape = lambda x: (x["block"], x["num_pivots"], x["num_warps"], x["programs"])  # noqa: E731
        us = {(x["batch"], shape(x)): x["us"] for x in r["sweep_top_p"]}
        batches = sorted({x["batch"] for x in r["sweep_top_p"]})
        print("| block | pivots | warps | programs | " + " | ".join(f"batch {b}" for b in batches) + " |")
        for cfg in SWEEP:
            print("| " + " | ".join(map(str, shape(cfg))) + " | "
                  + " | ".join(f"{us[b, shape(cfg)]:.0f}" for b in batches) + " |")


if __name__ == "__main__":
    main()
