"""Paged prefill attention alone: TFLOP/s of the prefill kernel's launch configurations on the
batches the engine's prefill and mixed steps hand it, against the float64 oracle.

    python bench/bench_prefill_attention.py [--baseline PATH] [--out DIR]

Shape: Llama-3.1-8B attention (32 query heads, 8 KV heads, head 128, bf16, block 16), one
layer's call. Batches (query tokens on cached tokens per request):
  fresh    4 x 2,048 on 0        (a max_num_batched_tokens=8192 step of 2k unique prompts)
  prefix   16 x 512 on 1,536     (the same step when 1.5k of each prompt is a cached prefix)
  mixed    1 x 2,048 chunk + 255 decodes on 1,000   (a prefill chunk beside a decode batch)
  small    1 x 64 chunk + 200 decodes on 1,000      (a step that fits a mixed CUDA graph)
FLOPs: 4 * head * heads * (keys each query sees), causal. Every configuration's output is
checked against the oracle (rel err), and times are medians of do_bench. --baseline: the root of
another checkout whose qinfer/kernels/paged_attention.py (an older kernel, the same call as
here minus the mixed-batch arguments) is timed on the same inputs; torch SDPA (flash, cuDNN) on
the fresh batch with contiguous K/V is a library reference. The best configuration on fresh +
prefix is written to DIR/prefill_cfg.json (the engine bench can load it).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import torch
import triton

from qinfer.kernels import paged_attention as pa
from qinfer.kernels.fresh_prefill import fresh_prefill
from qinfer.testing.paged_batch import attention_ref, make_batch, rel_err

HQ, HK, HEAD, BLOCK, DTYPE = 32, 8, 128, 16, torch.bfloat16
SCALE = HEAD ** -0.5
SHAPES = {  # name -> (query lens, cached lens)
    "fresh": ([2048] * 4, [0] * 4),
    "prefix": ([512] * 16, [1536] * 16),
    "mixed": ([2048] + [1] * 255, [0] + [1000] * 255),
    "small": ([64] + [1] * 200, [0] + [1000] * 200),
}
SWEEP = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in (
    (64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 4, 2),
    (128, 128, 8, 2), (128, 32, 4, 3), (64, 128, 4, 2), (128, 128, 8, 3))]


# fresh_prefill (no cached tokens: K/V read by TMA from the step's own rows)
FRESH_SWEEP = [dict(block_m=m, block_n=n, num_warps=w, num_stages=s) for m, n, w, s in (
    (128, 128, 8, 3), (128, 64, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 32, 4, 3),
    (128, 128, 8, 4), (128, 64, 8, 4))]


def causal_flops(query_lens, ctx_lens) -> float:
    keys_seen = sum(q * c + q * (q + 1) / 2 for q, c in zip(query_lens, ctx_lens))
    return 4 * HEAD * HQ * keys_seen


def load_baseline(root: str):
    spec = importlib.util.spec_from_file_location("baseline_paged_attention",
                                                  Path(root) / "qinfer/kernels/paged_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def time_ms(fn) -> float:
    fn()
    torch.cuda.synchronize()
    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def bench_shape(name: str, baseline) -> list[dict]:
    query_lens, ctx = SHAPES[name]
    q, kc, vc, bt, seq, qsl = make_batch(query_lens, ctx, HQ, HK, HEAD, BLOCK, DTYPE, seed=1, device="cuda")
    ref = attention_ref(q, kc, vc, bt, seq, qsl, SCALE)
    flops, max_seq = causal_flops(query_lens, ctx), int(seq.max())
    num_prefills = sum(n > 1 for n in query_lens)
    rows = []

    def record(label: str, fn, out: torch.Tensor | None, cfg=None):
        try:
            ms = time_ms(fn)
            err = rel_err(out, ref) if out is not None else None
        except Exception as exc:   # a configuration past the shared memory, an absent backend
            print(f"{name:>7} {label:<34} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            return
        rows.append(dict(shape=name, label=label, cfg=cfg, ms=ms, tflops=flops / ms / 1e9, rel_err=err))
        print(f"{name:>7} {label:<34} {ms:8.3f} ms {flops / ms / 1e9:7.1f} TFLOP/s  err "
              f"{'-' if err is None else f'{err:.1e}'}", flush=True)

    for cfg in SWEEP:
        out = torch.full_like(q, float("nan"))
        record(f"qinfer {cfg['block_m']}x{cfg['block_n']} w{cfg['num_warps']} s{cfg['num_stages']}",
               lambda cfg=cfg, out=out: pa.paged_prefill(q, kc, vc, bt, seq, qsl, max_seq, SCALE, out=out,
                                                         cfg=cfg, num_prefills=num_prefills), out, cfg)
    if baseline is not None:
        out = torch.full_like(q, float("nan"))
        record("baseline (--baseline kernel)",
               lambda: baseline.paged_prefill(q, kc, vc, bt, seq, qsl, max(query_lens), SCALE, out=out), out)
    if name == "fresh":
        record_sdpa(record, q, query_lens)
    if name in ("fresh", "prefix"):
        k, v = contiguous_kv(kc, vc, bt, seq)
        record_varlen(record, q, k, v, kc, vc, bt, seq, qsl, query_lens)
    if name == "fresh":
        for cfg in FRESH_SWEEP:
            out = torch.full_like(q, float("nan"))
            record(f"qinfer fresh (TMA) {cfg['block_m']}x{cfg['block_n']} w{cfg['num_warps']} s{cfg['num_stages']}",
                   lambda cfg=cfg, out=out: fresh_prefill(q, k, v, qsl, SCALE, out, num_prefills, cfg), out,
                   {"fresh": cfg})
    return rows


def record_sdpa(record, q: torch.Tensor, query_lens) -> None:
    """torch SDPA on contiguous [B, H, L, D] q/k/v of the same sizes (timing only)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    batch, length = len(query_lens), query_lens[0]
    qb = q.view(batch, length, HQ, HEAD).transpose(1, 2)
    kb = torch.randn(batch, HK, length, HEAD, device="cuda", dtype=DTYPE)
    vb = torch.randn_like(kb)
    for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION):
        def run(backend=backend):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(qb, kb, vb, is_causal=True,
                                                                        enable_gqa=True)
        record(f"torch sdpa {backend.name.lower()}", run, None)


def contiguous_kv(kc, vc, bt, seq) -> tuple[torch.Tensor, torch.Tensor]:
    """Each request's K / V rows gathered from the paged cache into one ragged [sum(seq), Hk, D]."""
    ctx = seq.long()
    rows = torch.cat([torch.arange(int(n), device=kc.device) for n in ctx.tolist()])
    req = torch.repeat_interleave(torch.arange(len(ctx), device=kc.device), ctx)
    slots = bt[req, rows // BLOCK].long() * BLOCK + rows % BLOCK
    return kc.view(-1, HK, HEAD)[slots].contiguous(), vc.view(-1, HK, HEAD)[slots].contiguous()


def record_varlen(record, q, k, v, kc, vc, bt, seq, qsl, query_lens) -> None:
    """torch.nn.attention.varlen (FlashAttention) where this torch has it: on K/V gathered into
    one contiguous ragged batch (what a fresh prompt's own new K/V are), and reading the paged
    cache through its block table where the API takes one. Checked against the oracle like ours."""
    try:
        import inspect

        from torch.nn.attention import varlen
    except ImportError as exc:
        print(f"torch varlen attention: absent ({exc})", flush=True)
        return
    params = inspect.signature(varlen.varlen_attn).parameters
    print(f"torch varlen_attn{inspect.signature(varlen.varlen_attn)}", flush=True)
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    gqa = {"enable_gqa": True} if "enable_gqa" in params else {}
    ctx = seq.long()
    cu_k = torch.cat([ctx.new_zeros(1), ctx.cumsum(0)]).to(torch.int32)
    max_q, max_k = max(query_lens), int(seq.max())

    def contiguous():
        return varlen.varlen_attn(q, k, v, qsl, cu_k, max_q, max_k, scale=SCALE, **causal, **gqa)

    def paged():
        return varlen.varlen_attn(q, kc, vc, qsl, None, max_q, max_k, scale=SCALE, **causal, **gqa,
                                  seqused_k=seq, block_table=bt)

    for label, fn in (("contiguous K/V", contiguous), ("paged cache", paged)):
        if label == "paged cache" and "block_table" not in params:
            continue
        try:
            out = fn()      # checked once; the timed calls return their own outputs
        except Exception as exc:
            print(f"torch varlen flash ({label}) failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
            continue
        record(f"torch varlen flash ({label})", fn, out)


def best_config(rows: list[dict]) -> dict:
    """The sweep configuration with the least fresh + prefix time, each relative to its best
    (the default if none passed both)."""
    times: dict[str, dict[str, float]] = {}
    for r in rows:
        is_ok = r["cfg"] is not None and r["rel_err"] is not None and r["rel_err"] < 1e-2
        if is_ok and r["shape"] in ("fresh", "prefix"):
            times.setdefault(json.dumps(r["cfg"], sort_keys=True), {})[r["shape"]] = r["ms"]
    complete = {cfg: t for cfg, t in times.items() if len(t) == 2}
    if not complete:
        return dict(pa.PREFILL_CFG)
    best = {s: min(t[s] for t in complete.values()) for s in ("fresh", "prefix")}
    return json.loads(min(complete, key=lambda cfg: sum(complete[cfg][s] / best[s] for s in best)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default=None, help="root of a checkout with an older kernel")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--out", default=os.environ.get("OUT") or "bench/results")
    args = parser.parse_args()
    baseline = load_baseline(args.baseline) if args.baseline else None
    rows = []
    for name in args.shapes.split(","):
        rows += bench_shape(name, baseline)
        torch.cuda.empty_cache()
    best = best_config(rows)
    print(f"\ndefault {pa.PREFILL_CFG}; best on fresh + prefix: {best}")
    for shape in args.shapes.split(","):
        mine = [r for r in rows if r["shape"] == shape and r["cfg"] == best]
        base = [r for r in rows if r["shape"] == shape and r["label"].startswith("baseline")]
        if mine and base:
            print(f"{shape:>7}: best {mine[0]['ms']:.3f} ms ({mine[0]['tflops']:.0f} TFLOP/s) vs baseline "
                  f"{base[0]['ms']:.3f} ms ({base[0]['tflops']:.0f}): {base[0]['ms'] / mine[0]['ms']:.2f}x")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "prefill_cfg.json").write_text(json.dumps(best))
    (Path(args.out) / "bench_prefill_attention.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "default_cfg": pa.PREFILL_CFG, "best_cfg": best,
         "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
