"""Causal prefill attention for requests with no cached tokens, from the step's own new K/V rows.

The paged prefill kernel (paged_attention.py) gathers every key tile through the block table;
a prompt with nothing cached attends only to its own new tokens, which are contiguous rows of
the step's key / value tensors, so this kernel loads them (and the queries) by TMA through
Triton tensor descriptors: 424 against 290 TFLOP/s on 4 x 2,048 fresh tokens on the H200
(bench/NOTES.md). paged_attention.paged_prefill calls it when the step says its prefills are
fresh (AttentionMetadata.prefills_are_fresh) and the tensors allow it; decode rows stay with the
decode kernel. Same numbering of query tiles, same online softmax (flash.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from qinfer.kernels.flash import (INTERPRET, LOG2E, check_head, online_softmax_update, prefill_tile,
                                  prefill_tile_bound)


@triton.jit(do_not_specialize=["num_reqs"])
def _fresh_prefill_kernel(
    out_ptr, q_desc, k_desc, v_desc, query_start_loc_ptr, scale_log2, num_reqs, stride_ot, stride_oh,
    GROUP: tl.constexpr, HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    REQS_PAD: tl.constexpr,
):
    """_prefill_kernel for requests with no cached tokens: the keys are the step's own new K/V
    rows ([T, Hk * D], ragged like the queries), read by TMA through tensor descriptors instead of
    gathered through the block table. A tile's rows past its request hold another request's
    queries or keys (or the descriptor's zero padding): the causal mask and the masked store
    keep them out."""
    req, mt = prefill_tile(query_start_loc_ptr, tl.program_id(0), num_reqs, BLOCK_M, REQS_PAD)
    if req >= num_reqs:
        return
    h = tl.program_id(1)
    start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - start
    mt = (q_len + BLOCK_M - 1) // BLOCK_M - 1 - mt            # a request's long (last) tiles first
    kvh = h // GROUP
    first_q = mt * BLOCK_M
    offs_m = first_q + tl.arange(0, BLOCK_M)
    q = q_desc.load([start + first_q, h * HEAD])              # [BLOCK_M, HEAD]
    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    seen_by_all = (first_q // BLOCK_N) * BLOCK_N              # keys below: every query sees them
    hi = tl.minimum(q_len, first_q + BLOCK_M)                 # causal: no key past the last query
    for n0 in range(0, seen_by_all, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = k_desc.load([start + n0, kvh * HEAD])
        v = v_desc.load([start + n0, kvh * HEAD])
        m, l, acc = online_softmax_update(q, k, v, offs_n < hi, offs_n, offs_m, scale_log2, m, l, acc,
                                          0, False, False, False, False)
    for n0 in range(seen_by_all, hi, BLOCK_N):                # the causal diagonal, masked
        offs_n = n0 + tl.arange(0, BLOCK_N)
        k = k_desc.load([start + n0, kvh * HEAD])
        v = v_desc.load([start + n0, kvh * HEAD])
        m, l, acc = online_softmax_update(q, k, v, offs_n < hi, offs_n, offs_m, scale_log2, m, l, acc,
                                          0, True, True, False, False)
    out = acc / l[:, None]
    d = tl.arange(0, HEAD)
    tl.store(out_ptr + (start + offs_m)[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=(offs_m < q_len)[:, None])


# The best of bench_prefill_attention.py's FRESH_SWEEP on 4 x 2,048 fresh tokens (H200: 424 TFLOP/s; 128 x 128
# w8 s3 410; the paged kernel 290)
FRESH_PREFILL_CFG = {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 3}


def fresh_prefill_applies(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether fresh_prefill can read these tensors: a GPU's bf16 / fp16 rows whose starts and
    strides TMA can address (16-byte multiples), heads contiguous; not the interpreter."""
    if INTERPRET or query.device.type != "cuda" or query.dtype not in (torch.bfloat16, torch.float16):
        return False
    return all(t.stride(2) == 1 and t.stride(1) == t.shape[2] and (t.stride(0) * t.element_size()) % 16 == 0
               and t.data_ptr() % 16 == 0 for t in (query, key, value))


def fresh_prefill(
    query: torch.Tensor,            # [num_tokens, num_heads, head_size] (ragged, flat)
    key: torch.Tensor,              # [num_tokens, num_kv_heads, head_size]: the step's new keys
    value: torch.Tensor,
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    scale: float,
    out: torch.Tensor,
    num_prefills: int | None = None,
    cfg: dict | None = None,
) -> torch.Tensor:
    """Causal attention of the requests of more than one query token that have no cached tokens
    (each attends to its own new keys only), read from key / value rather than the cache
    (fresh_prefill_applies must hold). Rows of one-token requests are left as they are in out."""
    cfg = {**FRESH_PREFILL_CFG, **(cfg or {})}
    num_tokens, num_heads, head = query.shape
    num_kv_heads = key.shape[1]
    check_head(head)
    num_reqs = query_start_loc.shape[0] - 1
    num_prefills = num_reqs if num_prefills is None else num_prefills
    block_m, block_n = cfg["block_m"], cfg["block_n"]
    q_desc = TensorDescriptor.from_tensor(query.flatten(1), [block_m, head])
    k_desc = TensorDescriptor.from_tensor(key.flatten(1), [block_n, head])
    v_desc = TensorDescriptor.from_tensor(value.flatten(1), [block_n, head])
    grid = (prefill_tile_bound(num_tokens, num_prefills, block_m), num_heads)
    _fresh_prefill_kernel[grid](
        out, q_desc, k_desc, v_desc, query_start_loc, scale * LOG2E, num_reqs, out.stride(0), out.stride(1),
        GROUP=num_heads // num_kv_heads, HEAD=head, BLOCK_M=block_m, BLOCK_N=block_n,
        REQS_PAD=max(256, triton.next_power_of_2(num_reqs)),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out
