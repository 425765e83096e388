"""Triton paged attention over the KV cache layout of layers/attention/backend.py.

Cache, per layer: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_size];
token t of request r sits at block block_tables[r, t // block_size], row t % block_size.

Two kernels:
- decode (one query token per request): one program per (request, kv head,
  context partition) handles all query heads of the GQA group, so each K/V tile
  is read once for the whole group. Long contexts are split into partitions
  ("flash-decoding") so a single request still spreads over the whole GPU: the
  grid's partition count comes from the batch and max_seq_len, each request splits
  its own length into that many whole tiles. The last partition of a (request, kv head) to finish merges the partial softmax
  states (an atomic counter tells it), so a step is one launch, not split + reduce.
  A request whose context fits one partition writes its output directly.
- prefill / chunked prefill (ragged query lengths): one program per
  (request, query head, tile of queries) runs causal flash attention over the
  cached + new keys of its request.
Both accumulate in float32 (F32: everything in float32 with exact dots) and use
exp2 with the scale folded into log2(e).

Sliding window W (sliding_window argument; None: full causal): the query at
position p sees keys p - W + 1 .. p. Both kernels start their key loop at the
oldest key a query of the program sees, so they never read the blocks the block
manager may have freed behind the window; decode partitions split only the
window's keys.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

_LOG2E = 1.4426950408889634


@triton.jit
def _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs, mask, kvh, d,
                  stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                  BLOCK_SIZE: tl.constexpr):
    """K and V [N, HEAD] of kv head kvh at token positions offs [N] (zeros where ~mask),
    gathered through the request's block table row bt_row."""
    blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
    row = offs % BLOCK_SIZE
    k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + row[:, None] * stride_kt
                + kvh * stride_kh + d[None, :], mask=mask[:, None], other=0.0)
    v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + row[:, None] * stride_vt
                + kvh * stride_vh + d[None, :], mask=mask[:, None], other=0.0)
    return k, v


@triton.jit
def _online_softmax_update(q, k, v, key_mask, key_pos, q_pos, scale_log2, m, l, acc, window,
                           CAUSAL: tl.constexpr, WINDOWED: tl.constexpr, F32: tl.constexpr):
    """One flash-attention step: fold the keys k / values v [N, HEAD] at positions key_pos [N]
    (valid where key_mask) into the running max m [M], denominator l [M] and output
    acc [M, HEAD] of the queries q [M, HEAD] at positions q_pos [M] (used only if CAUSAL).
    WINDOWED (with CAUSAL): a query also skips keys at or before q_pos - window.
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
    if CAUSAL:
        allowed = (key_pos[None, :] <= q_pos[:, None]) & key_mask[None, :]
        if WINDOWED:
            allowed = allowed & (key_pos[None, :] > q_pos[:, None] - window)
    else:
        allowed = key_mask[None, :]
    s = tl.where(allowed, s * scale_log2, float("-inf"))     # [M, N], log2 domain
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
def _decode_kernel(
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, counter_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr,
    scale_log2, window, num_parts, num_q_heads, num_kv_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_GROUP: tl.constexpr, MERGE_CHUNK: tl.constexpr, F32: tl.constexpr,
):
    req = tl.program_id(0)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    lo = tl.maximum(seq_len - window, 0)                      # oldest key the query sees
    # Each request spreads its own context over the grid's num_parts partitions (whole tiles):
    # a short context in a graph captured for max_model_len still fans out over the GPU.
    partition_size = tl.maximum(tl.cdiv(tl.cdiv(seq_len - lo, num_parts), TILE), 1) * TILE
    n_active = tl.maximum(tl.cdiv(seq_len - lo, partition_size), 1)  # partition 0 runs even when empty
    if part >= n_active:
        return  # the graph's grid covers max_model_len; this request's context ends earlier
    start = lo + part * partition_size
    end = tl.minimum(start + partition_size, seq_len)

    g = tl.arange(0, GROUP_PAD)
    heads = kvh * GROUP + g                                   # [GROUP_PAD] query heads
    d = tl.arange(0, HEAD)
    q = tl.load(q_ptr + req * stride_qt + heads[:, None] * stride_qh + d[None, :],
                mask=(g < GROUP)[:, None], other=0.0)         # [GROUP_PAD, HEAD]
    if F32:
        q = q.to(tl.float32)

    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD], tl.float32)
    bt_row = block_tables_ptr + req * stride_bt
    for t0 in range(start, end, TILE):
        offs = t0 + tl.arange(0, TILE)                        # [TILE] token positions
        tmask = offs < end                                    # t0 < end: each tile has a valid token
        k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs, tmask, kvh, d,
                             stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                             BLOCK_SIZE)                      # [TILE, HEAD] each
        m, l, acc = _online_softmax_update(q, k, v, tmask, offs, g, scale_log2, m, l, acc, window,
                                           False, False, F32)  # [GROUP_PAD, TILE] scores; g: unused q_pos

    hmask = g < GROUP
    out_ptrs = out_ptr + req * stride_ot + heads[:, None] * stride_oh + d[None, :]
    if SPLIT:
        if n_active == 1:
            out = acc / tl.where(l > 0, l, 1.0)[:, None]      # empty context (seq_len 0): zeros
            tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=hmask[:, None])
        else:
            # partials laid out [num_reqs, num_q_heads, num_parts(, HEAD)]
            row_id = (req * num_q_heads + heads) * num_parts + part
            tl.store(part_m_ptr + row_id, m, mask=hmask)
            tl.store(part_l_ptr + row_id, l, mask=hmask)
            tl.store(part_acc_ptr + row_id[:, None] * HEAD + d[None, :], acc, mask=hmask[:, None])
            tl.debug_barrier()  # every thread's partials are stored before the release below
            counter = counter_ptr + req * num_kv_heads + kvh
            if tl.atomic_add(counter, 1, sem="acq_rel") == n_active - 1:
                tl.atomic_xchg(counter, 0)  # zero again for the next launch (or graph replay)
                _merge_partitions(out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, req, kvh, n_active,
                                  num_parts, num_q_heads, stride_ot, stride_oh,
                                  GROUP, MERGE_GROUP, HEAD, MERGE_CHUNK)
    else:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=hmask[:, None])


@triton.jit
def _merge_partitions(out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, req, kvh, n_active,
                      num_parts, num_q_heads, stride_ot, stride_oh,
                      GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD: tl.constexpr,
                      CHUNK: tl.constexpr):
    """out of the GROUP query heads of (req, kvh) from the partials of its n_active partitions,
    CHUNK partitions at a time ([GROUP_PAD, CHUNK, HEAD] in registers), rescaled online.
    GROUP_PAD here is GROUP's next power of two (no tl.dot, so no minimum of 16)."""
    g = tl.arange(0, GROUP_PAD)
    heads = kvh * GROUP + g
    base = (req * num_q_heads + heads) * num_parts            # [GROUP_PAD] first partial row
    c = tl.arange(0, CHUNK)
    d = tl.arange(0, HEAD)
    m = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, HEAD], tl.float32)
    for p0 in range(0, n_active, CHUNK):
        rows = base[:, None] + p0 + c[None, :]                # [GROUP_PAD, CHUNK]
        pmask = (g < GROUP)[:, None] & (p0 + c < n_active)[None, :]
        # .cg: read the other programs' partials from L2, never a stale L1 line
        pm = tl.load(part_m_ptr + rows, mask=pmask, other=float("-inf"), cache_modifier=".cg")
        pl = tl.load(part_l_ptr + rows, mask=pmask, other=0.0, cache_modifier=".cg")
        pacc = tl.load(part_acc_ptr + rows[:, :, None] * HEAD + d[None, None, :],
                       mask=pmask[:, :, None], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(pm, 1))                  # finite: chunk has an active part
        w = tl.exp2(pm - m_new[:, None])                      # [GROUP_PAD, CHUNK]; 0 where masked
        alpha = tl.exp2(m - m_new)
        total = total * alpha + tl.sum(w * pl, 1)
        acc = acc * alpha[:, None] + tl.sum(pacc * w[:, :, None], 1)
        m = m_new
    # Heads past GROUP (padding) compute NaN from -inf - -inf; they are never stored.
    tl.store(out_ptr + req * stride_ot + heads[:, None] * stride_oh + d[None, :],
             (acc / total[:, None]).to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])


@triton.jit
def _prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale_log2, window,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, HEAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WINDOWED: tl.constexpr, F32: tl.constexpr,
):
    req = tl.program_id(0)
    h = tl.program_id(1)
    mt = tl.program_id(2)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    if mt * BLOCK_M >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    ctx = seq_len - q_len                                     # tokens cached before this step
    kvh = h // GROUP

    offs_m = mt * BLOCK_M + tl.arange(0, BLOCK_M)             # [BLOCK_M] query index in request
    mmask = offs_m < q_len
    d = tl.arange(0, HEAD)
    q = tl.load(q_ptr + (q_start + offs_m)[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=mmask[:, None], other=0.0)               # [BLOCK_M, HEAD]
    if F32:
        q = q.to(tl.float32)
    q_pos = ctx + offs_m                                      # absolute position of each query

    m = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    bt_row = block_tables_ptr + req * stride_bt
    hi = tl.minimum(seq_len, ctx + (mt + 1) * BLOCK_M)        # causal: no key past the last query
    lo = 0
    if WINDOWED:
        lo = tl.maximum(ctx + mt * BLOCK_M - window + 1, 0)   # the tile's first query's oldest key
    for n0 in range(lo, hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)                   # [BLOCK_N] key positions
        nmask = offs_n < hi
        k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs_n, nmask, kvh, d,
                             stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                             BLOCK_SIZE)                      # [BLOCK_N, HEAD] each
        # [BLOCK_M, BLOCK_N] scores, causal; unwindowed, key 0 is always allowed, so every row has
        # a finite max; windowed, every real row sees its own key by the last tile
        m, l, acc = _online_softmax_update(q, k, v, nmask, offs_n, q_pos, scale_log2, m, l, acc,
                                           window, True, WINDOWED, F32)

    out = acc / l[:, None]
    tl.store(out_ptr + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mmask[:, None])


# The interpreter has no bf16/fp16 arithmetic (numpy): compute in float32 there.
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _f32(dtype: torch.dtype) -> bool:
    """float32 inputs get exact (ieee) dots instead of tf32."""
    return dtype == torch.float32 or _INTERPRET


def _cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, ...]:
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "head_size must be contiguous"
    return (*k_cache.stride()[:3], *v_cache.stride()[:3])


# The window argument when there is none: larger than any context (seq_len - it stays an int32).
_NO_WINDOW = 2**30


def _window_arg(sliding_window: int | None) -> int:
    if sliding_window is None:
        return _NO_WINDOW
    assert sliding_window >= 1, f"sliding_window {sliding_window} must be >= 1"
    return sliding_window


def _check_head(head_size: int) -> None:
    # tl.dot needs dims >= 16 and arange needs powers of two.
    assert head_size >= 16 and head_size & (head_size - 1) == 0, f"head_size {head_size} unsupported"


# Decode launch parameters; the GPU bench sweeps them (bench/bench_attention.py).
DECODE_CFG = {"tile": 64, "num_warps": 4, "num_stages": 2, "min_partition": 64,
              "target_programs": 1024, "max_parts": 32}


def decode_partitions(num_reqs: int, num_kv_heads: int, max_seq_len: int, min_partition: int,
                      target_programs: int, max_parts: int) -> int:
    """The grid's partitions per (request, KV head): split long contexts until about
    target_programs run, partitions of at least min_partition tokens of max_seq_len, and at
    most max_parts (the last partition merges them all, one program: too many make it the tail).
    Each request then sizes its partitions from its own length, in the kernel.

    Depends only on host integers, so a captured CUDA graph keeps a valid launch as
    long as max_seq_len is the bound it was captured with.
    """
    base = num_reqs * num_kv_heads
    return max(1, min(triton.cdiv(target_programs, base), triton.cdiv(max_seq_len, min_partition), max_parts))


_COUNTERS: dict[torch.device, list[torch.Tensor]] = {}


def _merge_counters(n: int, device: torch.device) -> torch.Tensor:
    """[>= n] int32 zeros: per (request, kv head) count of finished partitions. Each launch
    leaves them at zero. Outgrown buffers stay alive: captured CUDA graphs keep their address."""
    buffers = _COUNTERS.setdefault(device, [])
    if not buffers or buffers[-1].numel() < n:
        buffers.append(torch.zeros(max(n, 2 * buffers[-1].numel() if buffers else 256),
                                   dtype=torch.int32, device=device))
    return buffers[-1]


def paged_decode(
    query: torch.Tensor,         # [num_reqs, num_heads, head_size] (one token per request)
    k_cache: torch.Tensor,       # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,  # [num_reqs, max_blocks] int32
    seq_lens: torch.Tensor,      # [num_reqs] int32
    max_seq_len: int,            # host bound on seq_lens (fixes the grid)
    scale: float,
    out: torch.Tensor | None = None,
    cfg: dict | None = None,
    sliding_window: int | None = None,  # the query sees its last sliding_window keys only
) -> torch.Tensor:               # [num_reqs, num_heads, head_size]
    cfg = {**DECODE_CFG, **(cfg or {})}
    if sliding_window is not None:
        max_seq_len = min(max_seq_len, sliding_window)   # keys a query reads: sizes tiles and partitions
    num_reqs, num_heads, head = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    _check_head(head)
    group = num_heads // num_kv_heads
    out = torch.empty_like(query) if out is None else out
    tile = max(16, min(cfg["tile"], triton.next_power_of_2(max(max_seq_len, 1))))
    parts = decode_partitions(num_reqs, num_kv_heads, max(max_seq_len, 1), cfg["min_partition"],
                              cfg["target_programs"], cfg["max_parts"])
    split = parts > 1
    if split:
        part_m = torch.empty((num_reqs, num_heads, parts), dtype=torch.float32, device=query.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((num_reqs, num_heads, parts, head), dtype=torch.float32,
                               device=query.device)
        counters = _merge_counters(num_reqs * num_kv_heads, query.device)
    else:
        part_m = part_l = part_acc = counters = out  # unused
    group_pad = max(16, triton.next_power_of_2(group))  # tl.dot needs >= 16 rows
    merge_group = triton.next_power_of_2(group)
    _decode_kernel[(num_reqs, num_kv_heads, parts)](
        out, part_m, part_l, part_acc, counters, query, k_cache, v_cache, block_tables, seq_lens,
        scale * _LOG2E, _window_arg(sliding_window), parts, num_heads, num_kv_heads,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        GROUP=group, GROUP_PAD=group_pad, HEAD=head,
        BLOCK_SIZE=block_size, TILE=tile, SPLIT=split,
        # merge registers: [merge_group, chunk, head] float32 <= 8192 (64 a thread at 4 warps)
        MERGE_GROUP=merge_group,
        MERGE_CHUNK=max(1, min(triton.next_power_of_2(parts), 8192 // (merge_group * head))),
        F32=_f32(query.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


PREFILL_CFG = {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2}


def paged_prefill(
    query: torch.Tensor,            # [num_tokens, num_heads, head_size] (ragged, flat)
    k_cache: torch.Tensor,          # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,     # [num_reqs, max_blocks] int32
    seq_lens: torch.Tensor,         # [num_reqs] int32, cached + new tokens
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    max_query_len: int,
    scale: float,
    out: torch.Tensor | None = None,
    cfg: dict | None = None,
    sliding_window: int | None = None,  # a query sees its last sliding_window keys only
) -> torch.Tensor:                  # [num_tokens, num_heads, head_size]
    """Causal attention of each request's new tokens to its cached and new keys.

    The new K/V must already be in the cache (the backend writes them first).
    """
    cfg = {**PREFILL_CFG, **(cfg or {})}
    _, num_heads, head = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    _check_head(head)
    out = torch.empty_like(query) if out is None else out
    num_reqs = seq_lens.shape[0]
    block_m = max(16, min(cfg["block_m"], triton.next_power_of_2(max(max_query_len, 1))))
    grid = (num_reqs, num_heads, triton.cdiv(max(max_query_len, 1), block_m))
    _prefill_kernel[grid](
        out, query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
        scale * _LOG2E, _window_arg(sliding_window),
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD=head, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=cfg["block_n"], WINDOWED=sliding_window is not None, F32=_f32(query.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


def kv_bytes(seq_lens: torch.Tensor, num_kv_heads: int, head_size: int, elem_size: int) -> int:
    """Bytes of K and V a decode step must read: the bandwidth numerator of the bench."""
    return int(seq_lens.sum()) * num_kv_heads * head_size * elem_size * 2


__all__ = ["paged_decode", "paged_prefill", "decode_partitions", "kv_bytes", "DECODE_CFG",
           "PREFILL_CFG"]
