"""Torch reference attention over the paged KV cache (CPU and GPU): the oracle for the kernels.

Request by request: write the new K/V, gather the request's context from its
block table, attend causally. Its queries are the last query_len of seq_len
context tokens, so query i sits at position seq_len - query_len + i.
"""
from __future__ import annotations

import torch

from qinfer import ops
from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata


def gather_context(cache: torch.Tensor, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
    """cache [N, B, Hk, D], block_table [max_blocks] -> the first seq_len tokens [seq_len, Hk, D]."""
    block_size = cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = cache[block_table[:num_blocks].long()]  # [num_blocks, B, Hk, D]
    return blocks.flatten(0, 1)[:seq_len]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """q [Lq, Hq, D], k/v [L, Hk, D] with Lq <= L -> [Lq, Hq, D]; query i sees keys 0..L-Lq+i."""
    query_len, seq_len = q.shape[0], k.shape[0]
    group = q.shape[1] // k.shape[1]  # query heads per kv head (GQA)
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.float(), k.float()) * scale
    query_pos = torch.arange(seq_len - query_len, seq_len, device=q.device)
    is_future = torch.arange(seq_len, device=q.device)[None, :] > query_pos[:, None]  # [Lq, L]
    probs = scores.masked_fill(is_future, float("-inf")).softmax(dim=-1)
    return torch.einsum("hqk,khd->qhd", probs, v.float()).to(q.dtype)


class ReferenceAttentionBackend(AttentionBackend):
    name = "reference"
    is_graph_safe = False    # host copies of the lengths

    def forward(self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                kv_written: bool = False):
        if not kv_written:
            ops.reshape_and_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        out = torch.empty_like(query)
        starts = meta.query_start_loc.tolist()  # host copies: fine for the oracle
        for r, seq_len in enumerate(meta.seq_lens.tolist()):
            k = gather_context(k_cache, meta.block_tables[r], seq_len)
            v = gather_context(v_cache, meta.block_tables[r], seq_len)
            out[starts[r]:starts[r + 1]] = causal_attention(query[starts[r]:starts[r + 1]], k, v, scale)
        return out
