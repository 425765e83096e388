"""Triton attention backend: write the new K/V into the paged cache, then attend.

Decode-only batches (every request has one query token) use the GQA decode
kernel with split-K over long contexts; any batch with a longer query (prefill,
chunked prefill, mixed prefill + decode) goes to paged_prefill, which runs its
prefill chunks in the causal prefill kernel and its decode rows in the decode
kernel (or, where no prefill request has cached tokens, fresh_prefill, reading
the step's own new K/V). Launch grids depend only on host integers of the metadata
(no lengths read back), so every batch shape can run inside a CUDA graph.
"""
from __future__ import annotations

import torch

from qinfer import ops
from qinfer.kernels import paged_attention
from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata


class TritonAttentionBackend(AttentionBackend):
    name = "triton"

    def forward(
        self,
        query: torch.Tensor,     # [num_tokens, num_heads, head_size]
        key: torch.Tensor,       # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,
        k_cache: torch.Tensor,   # [num_blocks, block_size, num_kv_heads, head_size]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        kv_written: bool = False,
        sliding_window: int | None = None,
    ) -> torch.Tensor:           # [num_tokens, num_heads, head_size]
        if not kv_written:
            ops.reshape_and_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        if meta.is_decode_only:
            return paged_attention.paged_decode(
                query, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.max_seq_len, scale,
                sliding_window=sliding_window)
        return paged_attention.paged_prefill(
            query, k_cache, v_cache, meta.block_tables, meta.seq_lens, meta.query_start_loc,
            meta.max_seq_len, scale, num_prefills=meta.num_prefills, sliding_window=sliding_window,
            new_kv=(key, value) if meta.prefills_are_fresh else None)
