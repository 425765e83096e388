"""Pieces the Triton attention kernels share (paged_attention.py, fresh_prefill.py): the online-
softmax step of flash attention, the numbering of a step's prefill tiles, host-side checks."""
from __future__ import annotations

import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# The interpreter has no bf16/fp16 arithmetic (numpy): compute in float32 there.
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def check_head(head_size: int) -> None:
    # tl.dot needs dims >= 16 and arange needs powers of two.
    assert head_size >= 16 and head_size & (head_size - 1) == 0, f"head_size {head_size} unsupported"


def prefill_tile_bound(num_tokens: int, num_prefills: int, block_m: int) -> int:
    """At most this many query tiles of block_m rows hold the step's prefill requests (those of
    more than one token): each needs cdiv(q, block_m) <= q / block_m + 1 of them."""
    return triton.cdiv(num_tokens, block_m) + num_prefills


@triton.jit
def online_softmax_update(q, k, v, key_mask, key_pos, q_pos, scale_log2, m, l, acc, window,
                          MASKED: tl.constexpr, CAUSAL: tl.constexpr, WINDOWED: tl.constexpr,
                          F32: tl.constexpr):
    """One flash-attention step: fold the keys k / values v [N, HEAD] at positions key_pos [N]
    (valid where key_mask) into the running max m [M], denominator l [M] and output
    acc [M, HEAD] of the queries q [M, HEAD] at positions q_pos [M] (used only if CAUSAL).
    MASKED False: every query sees every key of the tile (no mask is built).
    WINDOWED (with MASKED and CAUSAL): a query also skips keys at or before q_pos - window.
    Without WINDOWED, callers guarantee each row has an allowed key in this tile or an
    earlier one: an all -inf row would give exp2(-inf - -inf) = NaN. With it, a row may
    see its first key in a later tile (its window starts there), so the max is made safe.
    The mask is built here, after the QK^T dot as it was inline; built by the caller before
    the dot, the fp32 prefill kernel compiled to reordered code that spilled more."""
    if F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    if MASKED:
        if CAUSAL:
            allowed = (key_pos[None, :] <= q_pos[:, None]) & key_mask[None, :]
            if WINDOWED:
                allowed = allowed & (key_pos[None, :] > q_pos[:, None] - window)
        else:
            allowed = key_mask[None, :]
        s = tl.where(allowed, s * scale_log2, float("-inf"))  # [M, N], log2 domain
    else:
        s = s * scale_log2
    m_new = tl.maximum(m, tl.max(s, 1))
    if WINDOWED:
        m_new = tl.where(m_new == float("-inf"), 0.0, m_new)  # no key yet: p = 0, alpha = 0
    p = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(p, 1)
    if F32:
        pv = tl.dot(p, v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    acc = acc * alpha[:, None] + pv
    return m_new, l, acc


@triton.jit
def prefill_tile(query_start_loc_ptr, tile, num_reqs, BLOCK_M: tl.constexpr, REQS_PAD: tl.constexpr):
    """(request, query tile of that request) of the step's prefill tile number `tile`: tiles
    are counted over the requests with more than one query token, in batch order (a request
    of q tokens has cdiv(q, BLOCK_M) of them). The request is num_reqs or more past the last tile."""
    r = tl.arange(0, REQS_PAD)
    is_req = r < num_reqs
    starts = tl.load(query_start_loc_ptr + r, mask=is_req, other=0)
    lens = tl.load(query_start_loc_ptr + r + 1, mask=is_req, other=0) - starts
    num_tiles = tl.where(lens > 1, (lens + BLOCK_M - 1) // BLOCK_M, 0)
    ends = tl.cumsum(num_tiles, 0)                            # [REQS_PAD] end tile of each request
    req = tl.sum((ends <= tile).to(tl.int32), 0)              # the first request ending past tile
    first = tl.sum(tl.where(r == req, ends - num_tiles, 0), 0)
    return req, tile - first
