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
        # The per-head norms run in the attention layer's rotary op (ops.qk_norm_rotary_and_cache:
        # one launch with the rotary and the cache write where compiled).
        qk_norm = (self.q_norm.weight, self.k_norm.weight, self.q_norm.eps)
        return self.o_proj(self.attn(q, k, v, positions, qk_norm=qk_norm))


class Qwen3ForCausalLM(LlamaForCausalLM):
    def make_attention(self, config, layer_idx: int) -> nn.Module:
        return Qwen3Attention(config, layer_idx)
