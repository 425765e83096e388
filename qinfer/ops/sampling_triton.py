"""top-k / top-p / min-p masks without sorting the vocabulary: a Triton threshold search.

The kept set of a row (the semantics of the torch twin, qinfer/ops/reference.py) is a
prefix of the row's tokens ordered by (logit descending, token id ascending). A prefix is
a threshold t plus a count c: every token above t, and the c lowest ids among the tokens
equal to t. The kernel finds (t, c) by searching t, not by sorting:

- Values become int32 keys ordered like the floats (_sortable_key), so "the k-th largest
  logit" is "the largest key t with count(key >= t) >= k" and the top-p boundary is "the
  largest key t with mass(key >= t) >= p * Z" (mass: exp(logit - max), Z: the mass the
  top-k prefix keeps). Both are monotone in t: a search over [lo, hi) that, each pass,
  counts the row against NUM_PIVOTS pivots at once and keeps the one bucket holding t.
- The first pass spreads its pivots evenly in logit value between the row's min and max
  (logits cluster; key space is logarithmic, even pivots there would waste a pass), later
  passes evenly in key space, which ends the search after a bounded number of passes.
- Each thread sums its own elements per pivot; one reduction per pass. From the second
  pass on, the elements inside the current bucket are first written to a scratch row and
  the pass counts only those: a row is read about four times in all (max, the first
  pivot pass, the compaction, the final masking), however many passes the search takes.
  The final masking ranks tied tokens (a scan per block) only when some ties go.

A row is split over `split` programs, each owning a contiguous chunk of it (and of its
scratch row): one program per row leaves most SMs idle at small batches, each row's ~60
block loads and their reductions one after another on one SM. Every quantity the search decides on (max, min, the
pivot totals, the count of ties) is a sum or max over the row: each program writes its
chunk's part, waits at a per-row barrier (an arrival counter), and reduces the row's parts
in the same order as its siblings, so all of them take the same decisions. Deadlock-free
as long as a row's programs can all be resident, which split <= the SM count ensures:
programs take their (row, chunk) from a ticket counter in the order the GPU starts them,
so a waiting program's siblings have started or are next to start. The interpreter runs
programs one after another, so there split is 1.

Exactness against the torch twin: min-p compares logit - max with log(min_p), computed by
torch in both, and top-k compares logits only: the same kept sets bit for bit. top-p sums
probabilities in another order than torch's cumsum: the sets agree except for a token whose
cumulative mass lies within float32 rounding (~1e-6) of top_p.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import torch
import triton
import triton.language as tl

from qinfer.ops.registry import register

# _sortable_key(-inf) is 0xff800000 with its low 31 bits flipped; one below it lies below every key.
BELOW_ALL_KEYS = tl.constexpr(-2139095041 - 1)
KEEP_ALL_TIES = tl.constexpr(2**30)   # more than any vocabulary, exact in float32
# Launch shape: block and warps per program, pivots per pass, programs per launch (a row's
# split is programs // rows, within [1, SM count]; chunks of at least min_chunk tokens).
# Measured on the H200, vocab 128k, top_p 0.95 (bench/bench_sampler.py's sweep): 70-90 us at
# 1 row (one program per row: 590), 420-470 at 64 (710); at 256 rows ~1.5 ms either way.
CONFIG = {"block": 1024, "num_pivots": 8, "num_warps": 4, "programs": 512, "min_chunk": 2048}
SPLIT_TILE = tl.constexpr(32)   # the parts of a row reduced per load


@triton.jit
def _sortable_key(x):
    """float32 -> int32 keys in the floats' order (negative floats: low 31 bits flipped);
    -0.0 and 0.0 share key 0, as they compare equal."""
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return tl.where(x == 0.0, 0, key)


@triton.jit
def _key_value(key):
    """The inverse of _sortable_key (int32 key -> its float32)."""
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _pick(vector, index, NUM_PIVOTS: tl.constexpr):
    """vector[index] of a [NUM_PIVOTS] vector (0 when index is out of range)."""
    return tl.sum(tl.where(tl.arange(0, NUM_PIVOTS) == index, vector, 0), axis=0)


@triton.jit
def _load_row(ptr, offs, n, row_max, log_min_p, HAS_MIN_P: tl.constexpr):
    """A block of values with the tokens min-p drops at -inf (idempotent: scratch rows too)."""
    mask = offs < n
    x = tl.load(ptr + offs, mask=mask, other=float("-inf"))
    if HAS_MIN_P:
        x = tl.where(x - row_max < log_min_p, float("-inf"), x)
    return x, mask


@triton.jit
def _row_reduce(values, parts_ptr, arrivals_ptr, round_index, split, chunk, REDUCE_MAX: tl.constexpr,
                WIDTH: tl.constexpr):
    """values [WIDTH] float32 of this program's chunk -> (their sum or max over the row's split
    chunks, their sum over the chunks before this one: zeros when REDUCE_MAX), the same bits in
    every program of the row. parts_ptr: the row's [2, split, WIDTH] buffer; rounds alternate
    its halves, so a program a round ahead never overwrites parts a sibling still reads (two
    rounds ahead it cannot be: it would have passed a barrier the sibling has not reached).
    arrivals_ptr: the row's count of arrivals, split per round."""
    slot = parts_ptr + (round_index % 2) * split * WIDTH
    cols = tl.arange(0, WIDTH)
    tl.store(slot + chunk * WIDTH + cols, values)
    tl.debug_barrier()   # every thread's store is done before the arrival is released
    tl.atomic_add(arrivals_ptr, 1, sem="release")
    while tl.atomic_add(arrivals_ptr, 0, sem="acquire") < split * (round_index + 1):
        pass
    if REDUCE_MAX:
        acc = tl.full([SPLIT_TILE, WIDTH], float("-inf"), tl.float32)
    else:
        acc = tl.zeros([SPLIT_TILE, WIDTH], tl.float32)
    before = tl.zeros([SPLIT_TILE, WIDTH], tl.float32)
    for start in range(0, split, SPLIT_TILE):
        parts = start + tl.arange(0, SPLIT_TILE)
        part = tl.load(slot + parts[:, None] * WIDTH + cols[None, :], mask=(parts < split)[:, None],
                       other=float("-inf") if REDUCE_MAX else 0.0, volatile=True)   # past L1: siblings wrote it
        if REDUCE_MAX:
            acc = tl.maximum(acc, part)
        else:
            acc += part
            before += tl.where((parts < chunk)[:, None], part, 0.0)
    if REDUCE_MAX:
        return tl.max(acc, axis=0), tl.sum(before, axis=0)
    return tl.sum(acc, axis=0), tl.sum(before, axis=0)


@triton.jit
def _row_max_min(chunk_ptr, n, parts_ptr, arrivals_ptr, round_index, split, chunk, BLOCK: tl.constexpr,
                 NUM_PIVOTS: tl.constexpr):
    """max and the smallest finite value of the row (banned tokens are -inf)."""
    chunk_max = tl.full([BLOCK], float("-inf"), tl.float32)
    chunk_min = tl.full([BLOCK], float("inf"), tl.float32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(chunk_ptr + offs, mask=offs < n, other=float("-inf"))
        chunk_max = tl.maximum(chunk_max, x)
        chunk_min = tl.minimum(chunk_min, tl.where(x > float("-inf"), x, float("inf")))
    j = tl.arange(0, NUM_PIVOTS)   # [max, -min, -inf...]: one max-reduction gives both
    values = tl.where(j == 0, tl.max(chunk_max, axis=0), tl.where(j == 1, -tl.min(chunk_min, axis=0), float("-inf")))
    row, _ = _row_reduce(values, parts_ptr, arrivals_ptr, round_index, split, chunk, True, NUM_PIVOTS)
    return _pick(row, 0, NUM_PIVOTS), -_pick(row, 1, NUM_PIVOTS)


@triton.jit
def _pivots(lo, hi, pass_index, value_lo, value_hi, NUM_PIVOTS: tl.constexpr):
    """NUM_PIVOTS non-decreasing int32 keys in [lo + 1, hi - 1] (lo, hi int64, hi - lo >= 2).
    The first is always lo + 1: its counts are those strictly above lo."""
    j = tl.arange(0, NUM_PIVOTS)
    width = hi - lo - 1
    by_key = lo + 1 + (width * j) // NUM_PIVOTS
    a = tl.maximum(_key_value((lo + 1).to(tl.int32)), value_lo)
    b = tl.minimum(_key_value((hi - 1).to(tl.int32)), value_hi)
    spread = b - a
    values = a + spread * (j.to(tl.float32) / NUM_PIVOTS)
    by_value = tl.minimum(tl.maximum(_sortable_key(values).to(tl.int64), lo + 1), hi - 1)
    by_value = tl.where(j == 0, lo + 1, by_value)
    use_values = (pass_index == 0) & (spread > 0.0) & (spread < float("inf")) & (width > NUM_PIVOTS)
    return tl.where(use_values, by_value, by_key).to(tl.int32)


@triton.jit
def _pivot_totals(src_ptr, n, lo, hi, pivots, row_max, log_min_p, HAS_MIN_P: tl.constexpr,
                  BY_MASS: tl.constexpr, BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr):
    """Over the elements with key in [lo, hi): per pivot, their count (or mass) at or above it.
    Each thread sums its own elements; one reduction at the end (none per block)."""
    if BY_MASS:
        acc = tl.zeros([BLOCK, NUM_PIVOTS], tl.float32)
    else:
        acc = tl.zeros([BLOCK, NUM_PIVOTS], tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x, mask = _load_row(src_ptr, offs, n, row_max, log_min_p, HAS_MIN_P)
        key = _sortable_key(x)
        inside = mask & (key >= lo) & (key < hi)
        at_or_above = inside[:, None] & (key[:, None] >= pivots[None, :])   # [BLOCK, NUM_PIVOTS]
        if BY_MASS:
            acc += tl.where(at_or_above, tl.exp(x - row_max)[:, None], 0.0)
        else:
            acc += at_or_above.to(tl.int32)
    return tl.sum(acc, axis=0)


@triton.jit
def _compact(src_ptr, n, dst_ptr, lo, hi, row_max, log_min_p, HAS_MIN_P: tl.constexpr, BLOCK: tl.constexpr):
    """Write the elements with key in [lo, hi) to dst_ptr, in order; returns how many. In place
    when src is dst: a block's writes never pass the block being read."""
    num_written = 0
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x, mask = _load_row(src_ptr, offs, n, row_max, log_min_p, HAS_MIN_P)
        key = _sortable_key(x)
        is_inside = (mask & (key >= lo) & (key < hi)).to(tl.int32)
        tl.store(dst_ptr + num_written + tl.cumsum(is_inside, axis=0) - is_inside, x, mask=is_inside > 0)
        num_written += tl.sum(is_inside, axis=0)
    tl.debug_barrier()   # the next pass reads what every thread wrote
    return num_written


@triton.jit
def _count_equal(src_ptr, n, key_value, row_max, log_min_p, HAS_MIN_P: tl.constexpr, BLOCK: tl.constexpr):
    count = tl.zeros([BLOCK], tl.int32)
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x, mask = _load_row(src_ptr, offs, n, row_max, log_min_p, HAS_MIN_P)
        count += (mask & (_sortable_key(x) == key_value)).to(tl.int32)
    return tl.sum(count, axis=0)


@triton.jit
def _search(row_ptr, scratch_ptr, n, row_max, row_min, log_min_p, lo, lo_count, top_k, top_p,
            parts_ptr, arrivals_ptr, round_index, split, chunk,
            HAS_MIN_P: tl.constexpr, BY_MASS: tl.constexpr, BLOCK: tl.constexpr,
            NUM_PIVOTS: tl.constexpr):
    """The kept prefix's (threshold key t, ties kept c, ties there are in the row, ties in the
    chunks before this one, the next barrier round), searched above lo, where lo_count tokens
    (the lowest ids) of key lo are the ones a previous search kept.
    BY_MASS false: top-k (the largest t with count(key >= t) >= top_k).
    BY_MASS true: top-p (the largest t with mass(key >= t) >= top_p * Z).
    row_ptr / scratch_ptr / n: this program's chunk. Pass 0 reads the chunk; each later pass
    first compacts the current bucket's elements into the chunk's scratch, then counts only
    those. Counts travel as float32 between programs (exact below 2**24 tokens)."""
    start_lo = lo
    lo = lo.to(tl.int64)
    hi = (_sortable_key(row_max) + 1).to(tl.int64)
    lo_weight = tl.where(lo_count > 0, tl.exp(_key_value(start_lo) - row_max), 0.0)
    target = top_p * (lo_count * lo_weight)    # mass kept when nothing lies above lo
    total_hi = 0.0                             # what lies at or above hi (mass or count)
    src_ptr, num_src = row_ptr, n
    pass_index = 0
    while hi - lo > 1:
        if pass_index > 0:
            num_src = _compact(src_ptr, num_src, scratch_ptr, lo, hi, row_max, log_min_p, HAS_MIN_P, BLOCK)
            src_ptr = scratch_ptr
        pivots = _pivots(lo, hi, pass_index, row_min, row_max, NUM_PIVOTS)
        chunk_totals = _pivot_totals(src_ptr, num_src, lo, hi, pivots, row_max, log_min_p, HAS_MIN_P,
                                     BY_MASS, BLOCK, NUM_PIVOTS).to(tl.float32)
        row_totals, _ = _row_reduce(chunk_totals, parts_ptr, arrivals_ptr, round_index, split, chunk, False,
                                    NUM_PIVOTS)
        round_index += 1
        totals = total_hi + row_totals
        if BY_MASS:
            if pass_index == 0:   # Z: what lies above lo, plus the ties kept at lo
                target = top_p * (_pick(totals, 0, NUM_PIVOTS) + lo_count * lo_weight)
            holds = totals >= target
        else:
            holds = totals >= top_k
        num_holding = tl.sum(holds.to(tl.int32), axis=0)   # holds is true on a prefix of the pivots
        new_lo = tl.where(num_holding > 0, _pick(pivots, num_holding - 1, NUM_PIVOTS), lo)
        if num_holding < NUM_PIVOTS:
            hi = _pick(pivots, num_holding, NUM_PIVOTS).to(tl.int64)
            total_hi = _pick(totals, num_holding, NUM_PIVOTS)
        lo = new_lo.to(tl.int64)
        pass_index += 1
    threshold = lo.to(tl.int32)
    if BY_MASS:   # ties at the threshold while the mass ranked before them is below the target
        weight = tl.exp(_key_value(threshold) - row_max)
        ties = tl.maximum(tl.ceil((target - total_hi) / weight), 1.0)
        ties = tl.minimum(ties, KEEP_ALL_TIES * 1.0).to(tl.int32)
        num_ties = tl.where(threshold == start_lo, tl.minimum(ties, lo_count), ties)
    else:
        num_ties = (top_k - total_hi).to(tl.int32)
    # every element of key t is in the source list (all of them lie in every bucket searched)
    chunk_equal = _count_equal(src_ptr, num_src, threshold, row_max, log_min_p, HAS_MIN_P, BLOCK)
    j = tl.arange(0, NUM_PIVOTS)
    row_equal, equal_before = _row_reduce(tl.where(j == 0, chunk_equal.to(tl.float32), 0.0), parts_ptr,
                                          arrivals_ptr, round_index, split, chunk, False, NUM_PIVOTS)
    return (threshold, num_ties, _pick(row_equal, 0, NUM_PIVOTS).to(tl.int32),
            _pick(equal_before, 0, NUM_PIVOTS).to(tl.int32), round_index + 1)


@triton.jit
def _apply_threshold(chunk_ptr, n, row_max, log_min_p, threshold, num_ties, num_equal, equal_before,
                     HAS_MIN_P: tl.constexpr, BLOCK: tl.constexpr):
    """-inf at every token of the chunk outside the prefix (threshold key, num_ties lowest ids
    at it; equal_before ties lie in the row's earlier chunks). The ties are ranked (a scan per
    block) only when some of them go."""
    if num_ties >= num_equal:
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            raw = tl.load(chunk_ptr + offs, mask=offs < n, other=float("-inf"))
            x, mask = _load_row(chunk_ptr, offs, n, row_max, log_min_p, HAS_MIN_P)
            out = tl.where(_sortable_key(x) >= threshold, x, float("-inf"))
            tl.store(chunk_ptr + offs, out, mask=mask & (out != raw))
    else:
        num_seen = equal_before
        for start in range(0, n, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            raw = tl.load(chunk_ptr + offs, mask=offs < n, other=float("-inf"))
            x, mask = _load_row(chunk_ptr, offs, n, row_max, log_min_p, HAS_MIN_P)
            key = _sortable_key(x)
            is_tie = (key == threshold) & mask
            tie_rank = num_seen + tl.cumsum(is_tie.to(tl.int32), axis=0) - 1
            is_kept = (key > threshold) | (is_tie & (tie_rank < num_ties))
            out = tl.where(is_kept, x, float("-inf"))
            tl.store(chunk_ptr + offs, out, mask=mask & (out != raw))
            num_seen += tl.sum(is_tie.to(tl.int32), axis=0)


# split varies with the batch size: specialized (Triton compiles a variant for multiples of 16),
# a new batch size would compile mid-traffic while every request waits
@triton.jit(do_not_specialize=["split", "chunk_size"])
def _top_k_top_p_min_p_kernel(logits_ptr, scratch_ptr, top_k_ptr, top_p_ptr, log_min_p_ptr, sync_ptr, parts_ptr,
                              stride_logits, stride_scratch, vocab_size, split, chunk_size,
                              HAS_TOP_K: tl.constexpr, HAS_TOP_P: tl.constexpr, HAS_MIN_P: tl.constexpr,
                              BLOCK: tl.constexpr, NUM_PIVOTS: tl.constexpr):
    # sync_ptr: [1 + rows] int32 zeros: the ticket counter, then each row's arrivals
    ticket = tl.atomic_add(sync_ptr, 1)
    row = (ticket // split).to(tl.int64)
    chunk = ticket % split
    chunk_start = chunk * chunk_size
    n = tl.minimum(chunk_size, vocab_size - chunk_start)
    chunk_ptr = logits_ptr + row * stride_logits + chunk_start
    scratch_chunk = scratch_ptr + row * stride_scratch + chunk_start
    arrivals_ptr = sync_ptr + 1 + row
    parts_ptr = parts_ptr + row * 2 * split * NUM_PIVOTS
    top_k = vocab_size
    top_p = 1.0
    log_min_p = float("-inf")
    if HAS_TOP_K:
        top_k = tl.minimum(tl.load(top_k_ptr + row), vocab_size).to(tl.int32)
    if HAS_TOP_P:
        top_p = tl.load(top_p_ptr + row).to(tl.float32)
    if HAS_MIN_P:
        log_min_p = tl.load(log_min_p_ptr + row).to(tl.float32)
    uses_top_k = top_k < vocab_size
    uses_top_p = top_p < 1.0
    if uses_top_k | uses_top_p | (log_min_p > float("-inf")):
        row_max, row_min = _row_max_min(chunk_ptr, n, parts_ptr, arrivals_ptr, 0, split, chunk, BLOCK, NUM_PIVOTS)
        round_index = 1
        threshold = tl.full([], BELOW_ALL_KEYS, tl.int32)   # min-p alone: keep every token above it
        num_ties = tl.full([], 0, tl.int32)
        num_equal = tl.full([], 0, tl.int32)
        equal_before = tl.full([], 0, tl.int32)
        if HAS_TOP_K:
            if uses_top_k:
                threshold, num_ties, num_equal, equal_before, round_index = _search(
                    chunk_ptr, scratch_chunk, n, row_max, row_min, log_min_p, threshold, num_ties, top_k, top_p,
                    parts_ptr, arrivals_ptr, round_index, split, chunk, HAS_MIN_P, False, BLOCK, NUM_PIVOTS)
        if HAS_TOP_P:
            if uses_top_p:
                threshold, num_ties, num_equal, equal_before, round_index = _search(
                    chunk_ptr, scratch_chunk, n, row_max, row_min, log_min_p, threshold, num_ties, top_k, top_p,
                    parts_ptr, arrivals_ptr, round_index, split, chunk, HAS_MIN_P, True, BLOCK, NUM_PIVOTS)
        _apply_threshold(chunk_ptr, n, row_max, log_min_p, threshold, num_ties, num_equal, equal_before, HAS_MIN_P,
                         BLOCK)


def max_split(device: torch.device) -> int:
    """Programs a row may have: its programs must all be resident at once (see the module
    docstring), which the SM count ensures; 1 in the interpreter, which runs programs one
    after another."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return 1
    return _num_sms(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def top_k_top_p_min_p_triton(logits: torch.Tensor, top_k: Optional[torch.Tensor], top_p: Optional[torch.Tensor],
                             min_p: Optional[torch.Tensor], block: Optional[int] = None,
                             num_pivots: Optional[int] = None, num_warps: Optional[int] = None,
                             split: Optional[int] = None) -> torch.Tensor:
    """logits [S, V] float32, masked in place and returned (see the module docstring).
    block, num_pivots, num_warps: CONFIG's when None; split (programs per row, at most
    max_split): CONFIG's programs over the rows, in chunks of at least min_chunk tokens."""
    if top_k is None and top_p is None and min_p is None:
        return logits
    assert logits.dtype == torch.float32 and logits.stride(1) == 1
    num_rows, vocab_size = logits.shape
    if num_rows == 0:
        return logits
    block = block or CONFIG["block"]
    num_pivots = num_pivots or CONFIG["num_pivots"]
    if split is None:
        split = min(CONFIG["programs"] // num_rows, triton.cdiv(vocab_size, CONFIG["min_chunk"]))
    split = max(1, min(split, max_split(logits.device)))
    chunk_size = triton.cdiv(triton.cdiv(vocab_size, split), block) * block
    split = triton.cdiv(vocab_size, chunk_size)          # no empty chunk
    needs_search = top_k is not None or top_p is not None
    scratch = torch.empty_like(logits) if needs_search else logits
    log_min_p = min_p.log() if min_p is not None else None
    sync = torch.zeros(1 + num_rows, dtype=torch.int32, device=logits.device)
    parts = torch.empty(num_rows, 2, split, num_pivots, dtype=torch.float32, device=logits.device)
    _top_k_top_p_min_p_kernel[(num_rows * split,)](
        logits, scratch, _or(top_k, logits), _or(top_p, logits), _or(log_min_p, logits), sync, parts,
        logits.stride(0), scratch.stride(0), vocab_size, split, chunk_size,
        HAS_TOP_K=top_k is not None, HAS_TOP_P=top_p is not None, HAS_MIN_P=min_p is not None,
        BLOCK=block, NUM_PIVOTS=num_pivots, num_warps=num_warps or CONFIG["num_warps"])
    return logits


def _or(tensor: Optional[torch.Tensor], placeholder: torch.Tensor) -> torch.Tensor:
    return tensor if tensor is not None else placeholder   # never read: its HAS_* flag is off


register("top_k_top_p_min_p", "triton", ("cuda",))(top_k_top_p_min_p_triton)
