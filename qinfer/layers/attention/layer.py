"""Attention module: one layer's q, k, v against its slice of the paged KV cache."""
from __future__ import annotations

import torch
from torch import nn

from qinfer.layers.attention.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int):
        super().__init__()
        self.num_heads, self.head_size, self.num_kv_heads = num_heads, head_size, num_kv_heads
        self.scale = scale
        # [num_blocks, block_size, num_kv_heads, head_size] views set by ModelRunner.init_kv_cache.
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq*D], k/v [T, Hk*D] -> [T, Hq*D]."""
        context = get_forward_context()
        out = context.attn_backend.forward(
            q.view(-1, self.num_heads, self.head_size),
            k.view(-1, self.num_kv_heads, self.head_size),
            v.view(-1, self.num_kv_heads, self.head_size),
            self.k_cache, self.v_cache, context.attn_metadata, self.scale)
        return out.reshape(q.shape[0], self.num_heads * self.head_size)
