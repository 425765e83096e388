"""Attention module: one layer's q, k, v against its slice of the paged KV cache."""
from __future__ import annotations

import torch
from torch import nn

from qinfer.layers.attention.forward_context import get_forward_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 rotary_emb: nn.Module | None = None, sliding_window: int | None = None):
        """rotary_emb (a layers.rotary.RotaryEmbedding): rotate q and k here, fused with the
        K/V cache write (one kernel instead of two; the backend then skips its write).
        sliding_window: a query at position p sees only keys at p - sliding_window + 1 .. p
        (None: every earlier key); every backend gets it with each call."""
        super().__init__()
        self.num_heads, self.head_size, self.num_kv_heads = num_heads, head_size, num_kv_heads
        self.scale = scale
        self.rotary_emb = rotary_emb
        if sliding_window is not None and sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1, got {sliding_window}")
        self.sliding_window = sliding_window
        # [num_blocks, block_size, num_kv_heads, head_size] views set by ModelRunner.init_kv_cache.
        self.k_cache: torch.Tensor | None = None
        self.v_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                positions: torch.Tensor | None = None, qk_norm: tuple | None = None) -> torch.Tensor:
        """q [T, Hq*D], k/v [T, Hk*D] (rows may be strided views of a fused qkv), positions [T]
        (needed with rotary_emb) -> [T, Hq*D]. qk_norm (q_weight [D], k_weight [D], eps): RMS-norm
        every q and k head before the rotary, in its op (needs rotary_emb)."""
        context = get_forward_context()
        meta = context.attn_metadata
        if self.rotary_emb is not None:
            q, k = self.rotary_emb.forward_and_cache(positions, q, k, v, self.k_cache, self.v_cache,
                                                     meta.slot_mapping, qk_norm)
        elif qk_norm is not None:
            raise ValueError("qk_norm is applied with the rotary embedding; this layer has none")
        out = context.attn_backend.forward(
            q.view(-1, self.num_heads, self.head_size),
            k.view(-1, self.num_kv_heads, self.head_size),
            v.view(-1, self.num_kv_heads, self.head_size),
            self.k_cache, self.v_cache, meta, self.scale, kv_written=self.rotary_emb is not None,
            sliding_window=self.sliding_window)
        return out.reshape(q.shape[0], self.num_heads * self.head_size)
