"""Torch reference attention over the paged KV cache (CPU and GPU): the oracle for the kernels.

Request by request: write the new K/V, gather the request's context from its
block table, attend causally. Its queries are the last query_len of seq_len
context tokens, so query i sits at position seq_len - query_len + i. With a
sliding window W only the keys from position seq_len - query_len - W + 1 on are
gathered (older blocks may have been freed) and each query sees its last W keys.
"""
from __future__ import annotations

import torch

from qinfer import ops
from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int, start: int = 0) -> torch.Tensor:
    """cache [N, B, Hk, D], block_table [max_blocks] -> tokens start..seq_len-1 [seq_len - start, Hk, D]."""
    block_size = cache.shape[1]
    first_block, num_blocks = start // block_size, -(-seq_len // block_size)
    blocks = cache[block_table[first_block:num_blocks].long()]  # [num_blocks - first_block, B, Hk, D]
    return blocks.flatten(0, 1)[start - first_block * block_size:seq_len - first_block * block_size]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                     sliding_window: int | None = None) -> torch.Tensor:
    """q [Lq, Hq, D], k/v [L, Hk, D] with Lq <= L -> [Lq, Hq, D]; query i sees keys 0..L-Lq+i
    (with sliding_window W: only the last W of those)."""
    query_len, seq_len = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]  # query heads per kv head (GQA)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)[:, None]
    key_pos = torch.arange(seq_len, device=q.device)[None, :]
    is_hidden = key_pos > query_pos  # [Lq, L]
    if sliding_window is not None:
        is_hidden |= key_pos <= query_pos - sliding_window
    probs = scores.masked_fill(is_hidden, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


def first_visible_key(seq_len: int, query_len: int, sliding_window: int | None) -> int:
    """Position of the oldest key any of the request's queries sees."""
    if sliding_window is None:
        return 0
    return max(0, seq_len - query_len - sliding_window + 1)


class ReferenceAttentionBackend(AttentionBackend):
    name = "reference"
    is_graph_safe = False    # host copies of the lengths

    def forward(self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                kv_written: bool = False, sliding_window: int | None = None):
        if not kv_written:
            ops.reshape_and_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(query)
        starts = meta.query_start_loc.tolist()  # host copies: fine for the oracle
        for r, seq_len in enumerate(meta.seq_lens.tolist()):
            q = query[starts[r]:starts[r + 1]]
            start = first_visible_key(seq_len, q.shape[0], sliding_window)
            k = gather_context(k_cache, meta.block_tables[r], seq_len, start)
            v = gather_context(v_cache, meta.block_tables[r], seq_len, start)
            out[starts[r]:starts[r + 1]] = causal_attention(q, k, v, scale, sliding_window)
        return out
