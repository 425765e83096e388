"""Paged-attention decode kernel alone: achieved GB/s of K/V read vs measured copy bandwidth.

    python bench/bench_attention.py [--sweep] [--batches 1,16,64] [--contexts 1024,4096,16384] [--out DIR]

Shape: Llama-3.1-8B attention (32 query heads, 8 KV heads, head 128, bf16, block 16).
Batches 1/16/64 x contexts 1k/4k/16k. Bandwidth = bytes of K and V the step must
read / kernel time. Each timed call reads a different set of blocks (sets rotate
over >= 1 GiB) so L2 (60 MB) cannot serve repeats, and calls are replayed from a
CUDA graph so launch overhead stays out of small shapes. --sweep also times the
launch configurations in SWEEP and reports the best per shape.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
from pathlib import Path

import torch
import triton

from kernel_registers import compiled_variants, describe
from qinfer.kernels import paged_attention as pa

HQ, HK, HEAD, BLOCK, DTYPE = 32, 8, 128, 16, torch.bfloat16
BATCHES, CONTEXTS = (1, 16, 64), (1024, 4096, 16384)
ROTATE_BYTES = 1 << 30
# How far to split (tile, warps and stages were swept before: none beat tile 64 / 4 warps / 2
# stages by more than the spread).
SWEEP = ([dict(target_programs=p, max_parts=x) for p, x in itertools.product((1024, 2048), (8, 16, 32, 64, 128))]
         + [dict(target_programs=p, min_partition=m, num_stages=s) for p, m, s in
            itertools.product((1024, 2048, 4096), (64, 256), (2, 3)) if (p, m, s) != (1024, 64, 2)]
         + [dict(merge_chunk=c, num_stages=s) for c, s in itertools.product((4, 8, 16), (2, 3))])


def copy_bandwidth() -> float:
    """Device-to-device copy of 2 GiB, bytes read + written per second (METHOD.md)."""
    src = torch.randn(1 << 29, device="cuda")            # 2 GiB float32
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() * 4 / (ms * 1e-3)


def decode_sets(batch: int, ctx: int):
    """Rotating input sets sharing one cache: each set's block table points at its own blocks."""
    per_set = batch * ctx * HK * HEAD * 2 * 2            # K + V bytes one call reads
    n_sets = max(2, -(-ROTATE_BYTES // per_set))
    blocks_per_req = -(-ctx // BLOCK)
    num_blocks = n_sets * batch * blocks_per_req
    shape = (num_blocks, BLOCK, HK, HEAD)
    k_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
    v_cache = torch.randn(shape, device="cuda", dtype=DTYPE)
    perm = torch.randperm(num_blocks, device="cuda", dtype=torch.int32)
    tables = perm.view(n_sets, batch, blocks_per_req)
    seq_lens = torch.full((batch,), ctx, device="cuda", dtype=torch.int32)
    q = torch.randn(n_sets, batch, HQ, HEAD, device="cuda", dtype=DTYPE)
    return q, k_cache, v_cache, tables, seq_lens, per_set


def time_decode(batch: int, ctx: int, cfg: dict, sets) -> float:
    """Median seconds per decode call, replayed from a CUDA graph cycling through the sets."""
    q, k_cache, v_cache, tables, seq_lens, _ = sets
    outs = torch.empty_like(q)
    run = lambda i: pa.paged_decode(q[i], k_cache, v_cache, tables[i], seq_lens, ctx,  # noqa: E731
                                    HEAD ** -0.5, out=outs[i], cfg=cfg)
    n = tables.shape[0]
    for i in range(n):                                  # compile + warm up eagerly
        run(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n):
            run(i)
    ms = triton.testing.do_bench(graph.replay, warmup=20, rep=200, return_mode="median")
    return ms * 1e-3 / n


def check(batch: int, ctx: int, sets, cfg: dict) -> float:
    """Relative error of set 0 vs the float64 oracle (small batches only: it is slow)."""
    from qinfer.testing.paged_batch import attention_ref, rel_err
    q, k_cache, v_cache, tables, seq_lens, _ = sets
    qsl = torch.arange(batch + 1, device="cuda", dtype=torch.int32)
    out = pa.paged_decode(q[0], k_cache, v_cache, tables[0], seq_lens, ctx, HEAD ** -0.5, cfg=cfg)
    return rel_err(out, attention_ref(q[0], k_cache, v_cache, tables[0], seq_lens, qsl, HEAD ** -0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sweep", action="store_true", help="also time the SWEEP configurations")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)))
    parser.add_argument("--contexts", default=",".join(map(str, CONTEXTS)))
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = parser.parse_args()
    batches, contexts = (tuple(int(v) for v in text.split(",")) for text in (args.batches, args.contexts))
    torch.manual_seed(0)
    copy_bw = copy_bandwidth()
    configs = [pa.DECODE_CFG] + (SWEEP if args.sweep else [])
    rows = []
    for batch, ctx in itertools.product(batches, contexts):
        sets = decode_sets(batch, ctx)
        err = check(batch, ctx, sets, pa.DECODE_CFG) if batch * ctx <= 16 * 4096 else None
        timed = []
        for cfg in configs:
            full = {**pa.DECODE_CFG, **cfg}
            timed.append((time_decode(batch, ctx, full, sets), full))
        default_sec = timed[0][0]
        best_sec, best_cfg = min(timed, key=lambda x: x[0])
        per_set = sets[-1]
        rows.append(dict(batch=batch, ctx=ctx, kv_bytes=per_set, us=default_sec * 1e6,
                         gbs=per_set / default_sec / 1e9, pct_copy=100 * per_set / default_sec / copy_bw,
                         best_us=best_sec * 1e6, best_gbs=per_set / best_sec / 1e9, best_cfg=best_cfg,
                         rel_err=err,
                         splits=pa.decode_partitions(batch, HK, ctx, pa.DECODE_CFG["min_partition"],
                                                     pa.DECODE_CFG["target_programs"],
                                                     pa.DECODE_CFG["max_parts"])))
        del sets
        torch.cuda.empty_cache()
    report(rows, copy_bw, args.out, compiled_variants(pa._decode_kernel))


def report(rows: list[dict], copy_bw: float, out_dir: str, variants: list[dict]) -> None:
    print(f"\ncopy bandwidth (read+write): {copy_bw / 1e9:.0f} GB/s; default cfg {pa.DECODE_CFG}")
    print(f"{'batch':>5} {'ctx':>6} {'splits':>6} {'us':>8} {'GB/s':>7} {'%copy':>6} "
          f"{'best us':>8} {'best GB/s':>9} {'rel err':>8}  best cfg")
    for r in rows:
        err = f"{r['rel_err']:.1e}" if r["rel_err"] is not None else "-"
        cfg = {k: r["best_cfg"][k] for k in ("tile", "num_warps", "num_stages", "target_programs",
                                             "min_partition", "max_parts", "merge_chunk")}
        print(f"{r['batch']:>5} {r['ctx']:>6} {r['splits']:>6} {r['us']:>8.1f} {r['gbs']:>7.0f} "
              f"{r['pct_copy']:>5.0f}% {r['best_us']:>8.1f} {r['best_gbs']:>9.0f} {err:>8}  {cfg}")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    path = Path(out_dir) / "bench_attention.json"
    print(describe("_decode_kernel", variants))
    path.write_text(json.dumps({"device": torch.cuda.get_device_name(), "copy_gbs": copy_bw / 1e9,
                                "default_cfg": pa.DECODE_CFG, "rows": rows, "compiled_variants": variants}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
