"""Attention-backend interface: one flat batch of tokens against the paged KV cache.

KV cache layout (shared by every backend, the reference included), per layer:
    k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_size]
Token slot s lives at block s // block_size, offset s % block_size. Reading one
block of one head is a [block_size, head_size] tile whose rows are
num_kv_heads * head_size apart and whose columns are contiguous: coalesced
along head_size for the Triton kernels.

A step's batch is flat: queries of all requests concatenated, request r owning
rows query_start_loc[r]:query_start_loc[r+1]. Its queries are the LAST
query_len tokens of a context of seq_lens[r] tokens (cached + new), attending
causally.

Sliding window (a per-layer setting, passed with every forward call): with
sliding_window W, the query at position p attends to keys p - W + 1 .. p only
(Hugging Face's `kv_idx > q_idx - W`). The block manager may then have freed,
and handed to other requests, the blocks of request r wholly before position
seq_lens[r] - query_len - W + 1: their block-table entries are stale (still valid
ids, holding finite values of another request). A backend must give them zero
weight; the reference and Triton backends do not even read them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Optional

import torch


@dataclass
class AttentionMetadata:
    slot_mapping: torch.Tensor     # [num_tokens] int64: cache slot of each new token
    query_start_loc: torch.Tensor  # [num_reqs + 1] int32: prefix sums of query lengths
    seq_lens: torch.Tensor         # [num_reqs] int32: context length incl. this step's tokens
    block_tables: torch.Tensor     # [num_reqs, max_num_blocks_per_req] int32 (padding: any valid id)
    max_query_len: int             # host-side copies so kernels need no device sync
    max_seq_len: int
    num_prefills: Optional[int] = None  # host: requests of more than one query token (None: unknown)
    # host: no request of more than one query token has cached tokens, so their keys are exactly
    # this step's new ones (a backend may read those rows instead of the cache); False: unknown
    prefills_are_fresh: bool = False

    @property
    def num_reqs(self) -> int:
        return self.seq_lens.shape[0]

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionBackend(ABC):
    """Writes the step's new K/V into the cache (unless the caller already did), then attends."""

    name: str = "abstract"
    is_graph_safe: bool = True   # False: reads step sizes on the host, so no CUDA graph capture

    @abstractmethod
    def forward(
        self,
        query: torch.Tensor,     # [num_tokens, num_heads, head_size]
        key: torch.Tensor,       # [num_tokens, num_kv_heads, head_size]
        value: torch.Tensor,     # [num_tokens, num_kv_heads, head_size]
        k_cache: torch.Tensor,   # [num_blocks, block_size, num_kv_heads, head_size]
        v_cache: torch.Tensor,
        meta: AttentionMetadata,
        scale: float,
        kv_written: bool = False,  # key/value are in the cache already (ops.rotary_and_cache)
        sliding_window: int | None = None,  # keys older than this many positions are not seen
    ) -> torch.Tensor:           # [num_tokens, num_heads, head_size]
        ...
