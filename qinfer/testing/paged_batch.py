"""Random paged-KV batches and a float64 attention oracle, for the kernel tests and benches."""
from __future__ import annotations

import torch


def make_batch(query_lens, ctx_lens, num_heads, num_kv, head, block_size, dtype,
               seed=0, device="cpu"):
    """A ragged batch over a shuffled paged cache.

    Returns q [T, Hq, D], k_cache, v_cache [num_blocks, block_size, Hk, D],
    block_tables [R, max_blocks] int32 (padded with a valid id), seq_lens [R] int32
    (ctx + query), query_start_loc [R + 1] int32. Request r's tokens are its ctx_lens[r]
    cached ones followed by its query_lens[r] new ones, all already in the cache.
    """
    g = torch.Generator(device=device).manual_seed(seed)  # generated in place: 8k contexts on a GPU
    seq_lens = [c + q for c, q in zip(ctx_lens, query_lens)]
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    num_blocks = sum(blocks_per_req) + 3
    perm = torch.randperm(num_blocks, generator=g, device=device).to(torch.int32)
    block_tables = torch.full((len(seq_lens), max(blocks_per_req)), int(perm[-1]), dtype=torch.int32,
                              device=device)
    used = 0
    for r, nb in enumerate(blocks_per_req):
        block_tables[r, :nb] = perm[used:used + nb]
        used += nb
    shape = (num_blocks, block_size, num_kv, head)
    k_cache = torch.randn(shape, generator=g, device=device).to(dtype)
    v_cache = torch.randn(shape, generator=g, device=device).to(dtype)
    q = torch.randn(sum(query_lens), num_heads, head, generator=g, device=device).to(dtype)
    qsl = torch.tensor([0] + torch.tensor(query_lens).cumsum(0).tolist(), dtype=torch.int32, device=device)
    seq = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    return q, k_cache, v_cache, block_tables, seq, qsl


def attention_ref(q, k_cache, v_cache, block_tables, seq_lens, query_start_loc, scale, sliding_window=None):
    """float64 oracle: q [T, Hq, D] -> [T, Hq, D]; causal over each request's context (with
    sliding_window W: the query at position p sees keys p - W + 1 .. p)."""
    _, block_size, num_kv, _ = k_cache.shape
    out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
    starts, lens = query_start_loc.tolist(), seq_lens.tolist()
    for r, n in enumerate(lens):
        s, e = starts[r], starts[r + 1]
        slots = torch.arange(n, device=q.device)
        blocks = block_tables[r, slots // block_size].long()
        group = q.shape[1] // num_kv
        k = k_cache[blocks, slots % block_size].double().repeat_interleave(group, dim=1)  # [n, Hq, D]
        v = v_cache[blocks, slots % block_size].double().repeat_interleave(group, dim=1)
        scores = torch.einsum("lhd,nhd->hln", q[s:e].double(), k) * scale
        pos = n - (e - s) + torch.arange(e - s, device=q.device)
        scores.masked_fill_(slots[None, None, :] > pos[None, :, None], float("-inf"))
        if sliding_window is not None:
            scores.masked_fill_(slots[None, None, :] <= pos[None, :, None] - sliding_window, float("-inf"))
        out[s:e] = torch.einsum("hln,nhd->lhd", scores.softmax(-1), v)
    return out


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||; inf when out has NaN (never passes)."""
    if torch.isnan(out).any():
        return float("inf")
    return ((out.double() - ref.double()).norm() / ref.double().norm()).item()


def poison_blocks_behind_window(k_cache, v_cache, block_tables, seq_lens, query_start_loc, sliding_window):
    """NaN into every block of each request wholly before its oldest visible key
    (seq_len - query_len - W + 1): the blocks the block manager may have freed. A backend
    that reads one gives NaN even if it masks it (0 * NaN)."""
    block_size = k_cache.shape[1]
    query_lens = (query_start_loc[1:] - query_start_loc[:-1]).tolist()
    for r, (seq_len, query_len) in enumerate(zip(seq_lens.tolist(), query_lens)):
        num_hidden_blocks = max(0, seq_len - query_len - sliding_window + 1) // block_size
        hidden = block_tables[r, :num_hidden_blocks].long()
        k_cache[hidden] = float("nan")
        v_cache[hidden] = float("nan")
