"""Triton paged attention over the KV cache layout of layers/attention/backend.py.

Cache, per layer: k_cache, v_cache [num_blocks, block_size, num_kv_heads, head_size];
token t of request r sits at block block_tables[r, t // block_size], row t % block_size.

Two kernels here, and a third in fresh_prefill.py:
- decode (one query token per request): one program per (request, kv head,
  context partition) handles all query heads of the GQA group, so each K/V tile
  is read once for the whole group. Long contexts are split into partitions
  ("flash-decoding") so a single request still spreads over the whole GPU: the
  grid's partition count comes from the batch and max_seq_len, each request splits
  its own length into that many whole tiles. The last partition of a (request, kv head) to finish merges the partial softmax
  states (an atomic counter tells it), so a step is one launch, not split + reduce.
  A request whose context fits one partition writes its output directly.
- prefill / chunked prefill (ragged query lengths): one program per (query tile,
  query head) runs causal flash attention over the cached + new keys of its
  request: first the keys every query of the tile sees (no mask), then the few
  tiles on the causal diagonal (masked). Tiles are numbered over the requests
  with more than one query token, in the kernel, from query_start_loc; a mixed
  batch's one-token rows (decodes) go to the decode kernel, in the same call.
- fresh prefill (fresh_prefill.py; eager steps whose prefill requests have no cached
  tokens): the same causal loop over the step's own new K/V rows, loaded by TMA
  through tensor descriptors rather than gathered through the block table.
The grids depend only on host integers that a CUDA graph can fix (token count,
request count, a bound on the prefill requests, max_seq_len), never on the lengths
in the device buffers: a graph captured once replays any batch within its bounds.
Sliding window W (sliding_window argument; None: full causal): the query at
position p sees keys p - W + 1 .. p (fresh prefill has no window). The paged kernels start
their key loop at the oldest key a query of the program sees, so they never read the blocks the block
manager may have freed behind the window; decode partitions split only the
window's keys.
All accumulate in float32 (F32: everything in float32 with exact dots) and use
exp2 with the scale folded into log2(e).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qinfer.kernels.flash import (INTERPRET, LOG2E, check_head, online_softmax_update, prefill_tile,
                                  prefill_tile_bound)
from qinfer.kernels.fresh_prefill import fresh_prefill, fresh_prefill_applies

@triton.jit
def _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs, mask, kvh, d,
                  stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                  BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr):
    """K and V [N, HEAD] of kv head kvh at token positions offs [N] (zeros where ~mask;
    MASKED False: every position is valid and mask is ignored), gathered through the
    request's block table row bt_row."""
    row = offs % BLOCK_SIZE
    if MASKED:
        blk = tl.load(bt_row + offs // BLOCK_SIZE, mask=mask, other=0).to(tl.int64)
        k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + row[:, None] * stride_kt
                    + kvh * stride_kh + d[None, :], mask=mask[:, None], other=0.0)
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + row[:, None] * stride_vt
                    + kvh * stride_vh + d[None, :], mask=mask[:, None], other=0.0)
    else:
        blk = tl.load(bt_row + offs // BLOCK_SIZE).to(tl.int64)
        k = tl.load(k_cache_ptr + blk[:, None] * stride_kb + row[:, None] * stride_kt
                    + kvh * stride_kh + d[None, :])
        v = tl.load(v_cache_ptr + blk[:, None] * stride_vb + row[:, None] * stride_vt
                    + kvh * stride_vh + d[None, :])
    return k, v


# Host integers that vary step by step are not specialized on (Triton would compile a variant
# for 1 and for multiples of 16): a serving engine must not stop for a compile mid-traffic. The
# block table's row stride is one of them: an eager step's table is as wide as its longest context.
@triton.jit(do_not_specialize=["num_parts", "stride_bt"])
def _decode_kernel(
    out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, counter_ptr,
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale_log2, window, num_parts, num_q_heads, num_kv_heads,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD: tl.constexpr,
    BLOCK_SIZE: tl.constexpr, TILE: tl.constexpr, SPLIT: tl.constexpr,
    MERGE_GROUP: tl.constexpr, MERGE_CHUNK: tl.constexpr, MIXED: tl.constexpr, F32: tl.constexpr,
):
    req = tl.program_id(0)
    kvh = tl.program_id(1)
    part = tl.program_id(2)
    if MIXED:   # a mixed batch: request req's query row is query_start_loc[req], if it has one
        row = tl.load(query_start_loc_ptr + req)
        if tl.load(query_start_loc_ptr + req + 1) - row != 1:
            return  # a prefill chunk (the prefill kernel's) or a padding request (no query)
    else:
        row = req
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
    q = tl.load(q_ptr + row * stride_qt + heads[:, None] * stride_qh + d[None, :],
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
                             BLOCK_SIZE, True)                # [TILE, HEAD] each
        m, l, acc = online_softmax_update(q, k, v, tmask, offs, g, scale_log2, m, l, acc, window,
                                          True, False, False, F32)  # [GROUP_PAD, TILE]; g: unused q_pos

    hmask = g < GROUP
    out_ptrs = out_ptr + row * stride_ot + heads[:, None] * stride_oh + d[None, :]
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
                _merge_partitions(out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, req, row, kvh, n_active,
                                  num_parts, num_q_heads, stride_ot, stride_oh,
                                  GROUP, MERGE_GROUP, HEAD, MERGE_CHUNK)
    else:
        out = acc / tl.where(l > 0, l, 1.0)[:, None]
        tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=hmask[:, None])


@triton.jit
def _merge_partitions(out_ptr, part_m_ptr, part_l_ptr, part_acc_ptr, req, row, kvh, n_active,
                      num_parts, num_q_heads, stride_ot, stride_oh,
                      GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD: tl.constexpr,
                      CHUNK: tl.constexpr):
    """out row `row` of the GROUP query heads of (req, kvh) from the partials of its n_active partitions,
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
    tl.store(out_ptr + row * stride_ot + heads[:, None] * stride_oh + d[None, :],
             (acc / total[:, None]).to(out_ptr.dtype.element_ty), mask=(g < GROUP)[:, None])


@triton.jit(do_not_specialize=["num_reqs", "stride_bt"])   # (see _decode_kernel)
def _prefill_kernel(
    out_ptr, q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, seq_lens_ptr, query_start_loc_ptr,
    scale_log2, window, num_reqs,
    stride_qt, stride_qh, stride_ot, stride_oh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_bt,
    GROUP: tl.constexpr, HEAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, REQS_PAD: tl.constexpr, WINDOWED: tl.constexpr,
    F32: tl.constexpr,
):
    req, mt = prefill_tile(query_start_loc_ptr, tl.program_id(0), num_reqs, BLOCK_M, REQS_PAD)
    if req >= num_reqs:
        return  # the grid is a bound on the step's prefill tiles
    h = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + req)
    q_len = tl.load(query_start_loc_ptr + req + 1) - q_start
    mt = (q_len + BLOCK_M - 1) // BLOCK_M - 1 - mt            # a request's long (last) tiles first
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
    first_q = ctx + mt * BLOCK_M                              # position of the tile's first query
    seen_by_all = (first_q // BLOCK_N) * BLOCK_N              # keys below: every query sees them
    hi = tl.minimum(seq_len, first_q + BLOCK_M)               # causal: no key past the last query
    if WINDOWED:   # every key tile masked: each query's window starts at its own position
        for n0 in range(tl.maximum(first_q - window + 1, 0), hi, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            nmask = offs_n < hi
            k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs_n, nmask, kvh, d,
                                 stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                 BLOCK_SIZE, True)
            # a real row sees its own key by the last tile; rows before their window are kept finite
            m, l, acc = online_softmax_update(q, k, v, nmask, offs_n, q_pos, scale_log2, m, l, acc,
                                              window, True, True, True, F32)
    else:
        for n0 in range(0, seen_by_all, BLOCK_N):             # whole key tiles, no mask
            offs_n = n0 + tl.arange(0, BLOCK_N)
            k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs_n, offs_n < hi, kvh, d,
                                 stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                 BLOCK_SIZE, False)
            m, l, acc = online_softmax_update(q, k, v, offs_n < hi, offs_n, q_pos, scale_log2, m, l, acc,
                                              window, False, False, False, F32)
        for n0 in range(seen_by_all, hi, BLOCK_N):            # the causal diagonal, masked
            offs_n = n0 + tl.arange(0, BLOCK_N)               # [BLOCK_N] key positions
            nmask = offs_n < hi
            k, v = _load_kv_tile(k_cache_ptr, v_cache_ptr, bt_row, offs_n, nmask, kvh, d,
                                 stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
                                 BLOCK_SIZE, True)            # [BLOCK_N, HEAD] each
            # [BLOCK_M, BLOCK_N] scores; key seen_by_all <= first_q is allowed for every row of the
            # first masked tile, so every row has a finite max
            m, l, acc = online_softmax_update(q, k, v, nmask, offs_n, q_pos, scale_log2, m, l, acc,
                                              window, True, True, False, F32)

    out = acc / l[:, None]
    tl.store(out_ptr + (q_start + offs_m)[:, None] * stride_ot + h * stride_oh + d[None, :],
             out.to(out_ptr.dtype.element_ty), mask=mmask[:, None])


# The window argument when there is none: larger than any context (seq_len - it stays an int32).
_NO_WINDOW = 2**30


def _window_arg(sliding_window: int | None) -> int:
    if sliding_window is None:
        return _NO_WINDOW
    assert sliding_window >= 1, f"sliding_window {sliding_window} must be >= 1"
    return sliding_window


def _f32(dtype: torch.dtype) -> bool:
    """float32 inputs get exact (ieee) dots instead of tf32."""
    return dtype == torch.float32 or INTERPRET


def _cache_strides(k_cache: torch.Tensor, v_cache: torch.Tensor) -> tuple[int, ...]:
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "head_size must be contiguous"
    return (*k_cache.stride()[:3], *v_cache.stride()[:3])


# Decode launch parameters; the GPU bench sweeps them (bench/bench_attention.py).
# merge_chunk: partitions the merging program reads per step of its loop. 8 against 16 took
# 10-15% off split launches (16-64 requests) on the H200 (bench/NOTES.md, session 6).
DECODE_CFG = {"tile": 64, "num_warps": 4, "num_stages": 2, "min_partition": 64,
              "target_programs": 1024, "max_parts": 32, "merge_chunk": 8}


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
    query_start_loc: torch.Tensor | None = None,
    sliding_window: int | None = None,  # the query sees its last sliding_window keys only
) -> torch.Tensor:               # [num_reqs, num_heads, head_size]
    """One query token per request. With query_start_loc [num_reqs + 1] (a mixed batch:
    query [num_tokens, ...]), request r's query is row query_start_loc[r] and only the
    requests of exactly one query token are attended (their rows of out written)."""
    cfg = {**DECODE_CFG, **(cfg or {})}
    if sliding_window is not None:
        max_seq_len = min(max_seq_len, sliding_window)   # keys a query reads: sizes tiles and partitions
    _, num_heads, head = query.shape
    num_reqs = seq_lens.shape[0]
    _, block_size, num_kv_heads, _ = k_cache.shape
    check_head(head)
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
    # merge registers: [merge_group, chunk, head] float32 <= 8192 (64 a thread at 4 warps); fixed by
    # the config, not this launch's partition count, so every split launch shares one compiled kernel
    merge_chunk = max(1, min(cfg["merge_chunk"], cfg["max_parts"], 8192 // (merge_group * head)))
    is_mixed = query_start_loc is not None
    _decode_kernel[(num_reqs, num_kv_heads, parts)](
        out, part_m, part_l, part_acc, counters, query, k_cache, v_cache, block_tables, seq_lens,
        query_start_loc if is_mixed else seq_lens,   # unused when not mixed
        scale * LOG2E, _window_arg(sliding_window), parts, num_heads, num_kv_heads,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        GROUP=group, GROUP_PAD=group_pad, HEAD=head,
        BLOCK_SIZE=block_size, TILE=tile, SPLIT=split,
        MERGE_GROUP=merge_group, MERGE_CHUNK=merge_chunk,
        MIXED=is_mixed, F32=_f32(query.dtype), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


# Prefill launch parameters: the best of bench/bench_prefill_attention.py's sweep on the H200
# (head 128, bf16) over fresh 2k prompts and 512-token chunks on a 1.5k prefix (bench/NOTES.md).
PREFILL_CFG = {"block_m": 128, "block_n": 32, "num_warps": 4, "num_stages": 3}


def paged_prefill(
    query: torch.Tensor,            # [num_tokens, num_heads, head_size] (ragged, flat)
    k_cache: torch.Tensor,          # [num_blocks, block_size, num_kv_heads, head_size]
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,     # [num_reqs, max_blocks] int32
    seq_lens: torch.Tensor,         # [num_reqs] int32, cached + new tokens
    query_start_loc: torch.Tensor,  # [num_reqs + 1] int32
    max_seq_len: int,               # host bound on seq_lens (fixes the decode rows' grid)
    scale: float,
    out: torch.Tensor | None = None,
    cfg: dict | None = None,
    num_prefills: int | None = None,
    decode_cfg: dict | None = None,
    sliding_window: int | None = None,  # a query sees its last sliding_window keys only
    new_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:                  # [num_tokens, num_heads, head_size]
    """Causal attention of each request's new tokens to its cached and new keys, any mix of
    prefill chunks and decode rows: requests of one query token run in the decode kernel (a
    program per GQA group, split context), the others in the prefill kernel.

    new_kv: the step's new (key, value) [num_tokens, num_kv_heads, head_size], passed when no
    request of more than one query token has cached tokens: those requests then run in
    fresh_prefill, which reads their keys from these rows by TMA, where it applies (no window,
    fresh_prefill_applies); the decode rows still read the cache.

    num_prefills: host bound on the requests of more than one query token (None: num_reqs);
    it, the token count, the request count and max_seq_len fix the grids, so one CUDA graph
    serves every batch within them. Requests of no query token (padding) are skipped, and so
    are rows past query_start_loc[-1]. The new K/V must already be in the cache.
    """
    cfg = {**PREFILL_CFG, **(cfg or {})}
    check_head(query.shape[2])
    out = torch.empty_like(query) if out is None else out
    num_prefills = seq_lens.shape[0] if num_prefills is None else num_prefills
    if new_kv is not None and sliding_window is None and fresh_prefill_applies(query, *new_kv):
        fresh_prefill(query, *new_kv, query_start_loc, scale, out, num_prefills)
    else:
        _launch_prefill(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, out, cfg,
                        num_prefills, sliding_window)
    paged_decode(query, k_cache, v_cache, block_tables, seq_lens, max_seq_len, scale, out=out,
                 cfg=decode_cfg, query_start_loc=query_start_loc, sliding_window=sliding_window)
    return out


def _launch_prefill(query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, out, cfg,
                    num_prefills, sliding_window) -> None:
    """_prefill_kernel over the step's prefill tiles (paged_prefill's arguments)."""
    num_tokens, num_heads, head = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    num_reqs = seq_lens.shape[0]
    grid = (prefill_tile_bound(num_tokens, num_prefills, cfg["block_m"]), num_heads)
    _prefill_kernel[grid](
        out, query, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
        scale * LOG2E, _window_arg(sliding_window), num_reqs,
        query.stride(0), query.stride(1), out.stride(0), out.stride(1),
        *_cache_strides(k_cache, v_cache), block_tables.stride(0),
        GROUP=num_heads // num_kv_heads, HEAD=head, BLOCK_SIZE=block_size,
        BLOCK_M=cfg["block_m"], BLOCK_N=cfg["block_n"],
        # every program reads all request lengths to find its tile: few sizes, few compilations
        REQS_PAD=max(256, triton.next_power_of_2(num_reqs)), WINDOWED=sliding_window is not None,
        F32=_f32(query.dtype),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )


def kv_bytes(seq_lens: torch.Tensor, num_kv_heads: int, head_size: int, elem_size: int) -> int:
    """Bytes of K and V a decode step must read: the bandwidth numerator of the bench."""
    return int(seq_lens.sum()) * num_kv_heads * head_size * elem_size * 2


__all__ = ["paged_decode", "paged_prefill", "decode_partitions", "kv_bytes", "DECODE_CFG", "PREFILL_CFG"]
