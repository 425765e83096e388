"""Llama (1/2/3/3.1) for causal LM: GQA, tied or untied head, default / llama3 / longrope rope,
sliding-window attention where the config sets one.

forward(input_ids [T], positions [T]) -> hidden [T, H] over a flat batch;
compute_logits(hidden [N, H]) -> [N, V] only for the positions that sample.
The other families reuse these modules: a subclass overrides attention_biases,
make_attention or make_mlp (Qwen2: biases; Qwen3: per-head q/k norms; Mistral and
Phi-3 need nothing more than what the config already selects here).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from qinfer.layers.attention.layer import Attention
from qinfer.layers.embedding import LMHead, VocabEmbedding
from qinfer.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from qinfer.layers.norm import RMSNorm
from qinfer.layers.rotary import RotaryEmbedding, rope_parameters


def head_size_of(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def sliding_window_of(config, layer_idx: int) -> int | None:
    """The attention window of layer layer_idx (None: full causal attention).

    Mistral and Phi-3 set `sliding_window` for every layer; configs with `layer_types`
    (Qwen2/Qwen3 with use_sliding_window) window only their "sliding_attention" layers.
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and layer_types[layer_idx] != "sliding_attention":
        return None
    return window


class LlamaAttention(nn.Module):
    def __init__(self, config, qkv_bias: bool, o_bias: bool, sliding_window: int | None = None):
        super().__init__()
        head_size = self.head_size = head_size_of(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_size, config.num_attention_heads,
                                          config.num_key_value_heads, bias=qkv_bias)
        # Per-rank head counts (the fused projection already divided them for TP).
        self.num_heads = config.num_attention_heads // self.qkv_proj.tp_size
        self.num_kv_heads = self.qkv_proj.output_sizes[1] // head_size // self.qkv_proj.tp_size
        self.q_size, self.kv_size = self.num_heads * head_size, self.num_kv_heads * head_size
        self.o_proj = RowParallelLinear(config.num_attention_heads * head_size, config.hidden_size, bias=o_bias)
        self.rotary_emb = RotaryEmbedding(head_size, config.max_position_embeddings, rope_parameters(config))
        self.attn = Attention(self.num_heads, head_size, head_size ** -0.5, self.num_kv_heads,
                              rotary_emb=self.rotary_emb, sliding_window=sliding_window)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        # q, k, v stay views of the fused projection (no copies); the attention layer rotates
        # q and k in place and writes k, v to the cache in one op.
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        return self.o_proj(self.attn(q, k, v, positions))


class LlamaMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        bias = getattr(config, "mlp_bias", False)
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2, bias)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.silu_and_mul(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config, self_attn: nn.Module, mlp: nn.Module):
        super().__init__()
        self.self_attn, self.mlp = self_attn, mlp
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, positions, hidden, residual):
        """Pre-norm block; the residual add is fused into the next norm."""
        if residual is None:
            hidden, residual = self.input_layernorm(hidden), hidden
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(self, config, make_layer: Callable[[object, int], nn.Module]):
        """make_layer(config, layer_idx) -> the decoder layer (the causal-LM class decides its parts)."""
        super().__init__()
        self.embed_tokens = VocabEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(make_layer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        return self.norm(hidden, residual)[0]


class LlamaForCausalLM(nn.Module):
    # checkpoint name -> (fused parameter name, shard id)
    packed_modules_mapping = {
        "q_proj": ("qkv_proj", "q"), "k_proj": ("qkv_proj", "k"), "v_proj": ("qkv_proj", "v"),
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1),
    }

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.make_decoder_layer)
        self.lm_head = LMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        """(qkv_proj has bias, o_proj has bias)."""
        bias = getattr(config, "attention_bias", False)
        return bias, bias

    def make_attention(self, config, layer_idx: int) -> nn.Module:
        return LlamaAttention(config, *self.attention_biases(config), sliding_window_of(config, layer_idx))

    def make_mlp(self, config, layer_idx: int) -> nn.Module:
        return LlamaMLP(config)

    def make_decoder_layer(self, config, layer_idx: int) -> nn.Module:
        return LlamaDecoderLayer(config, self.make_attention(config, layer_idx), self.make_mlp(config, layer_idx))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden)
