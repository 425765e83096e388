"""Qwen3 for causal LM: Llama's architecture with an RMSNorm over each q and k head before
rotary, head_dim from the config (not hidden_size / heads), and no qkv bias by default.

Qwen3Attention is importable on its own: Qwen3-MoE uses the same attention block.
"""
from __future__ import annotations

import torch
from torch import nn

from qinfer.layers.norm import RMSNorm
from qinfer.models.llama import LlamaAttention, LlamaForCausalLM, sliding_window_of


class Qwen3Attention(LlamaAttention):
    def __init__(self, config, layer_idx: int):
        bias = getattr(config, "attention_bias", False)
        super().__init__(config, qkv_bias=bias, o_bias=bias, sliding_window=sliding_window_of(config, layer_idx))
        self.q_norm = RMSNorm(self.head_size, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_size, config.rms_norm_eps)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        # Per head: [T, H*D] -> [T*H, D] rows (a copy: q and k are strided views of the fused
        # projection), normed, and back; v stays a view.
        q = self.q_norm(q.reshape(-1, self.head_size)).view(q.shape)
        k = self.k_norm(k.reshape(-1, self.head_size)).view(k.shape)
        return self.o_proj(self.attn(q, k, v, positions))


class Qwen3ForCausalLM(LlamaForCausalLM):
    def make_attention(self, config, layer_idx: int) -> nn.Module:
        return Qwen3Attention(config, layer_idx)
