"""Qwen3-MoE for causal LM: Qwen3's attention (per-head q/k RMSNorm), sparse MoE MLPs.

The router's softmax runs over all experts and the top num_experts_per_tok are kept, renormalised
to sum 1 only when norm_topk_prob (Qwen3-30B-A3B sets it). Layers listed in mlp_only_layers, or
off the decoder_sparse_step grid, keep a dense MLP of intermediate_size; experts are
moe_intermediate_size wide, their projections named like a dense MLP's under `experts.N.`.
"""
from __future__ import annotations

from torch import nn

from qinfer.layers.moe import SparseMoeBlock
from qinfer.models.llama import LlamaMLP
from qinfer.models.qwen3 import Qwen3ForCausalLM


def is_sparse_layer(config, layer_idx: int) -> bool:
    """Hugging Face's Qwen3MoeDecoderLayer rule."""
    return (layer_idx not in (getattr(config, "mlp_only_layers", None) or [])
            and config.num_experts > 0 and (layer_idx + 1) % config.decoder_sparse_step == 0)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    expert_params_mapping = {"gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1),
                             "down_proj": ("w2_weight", None)}

    def make_mlp(self, config, layer_idx: int) -> nn.Module:
        if not is_sparse_layer(config, layer_idx):
            return LlamaMLP(config)
        return SparseMoeBlock(config.hidden_size, config.num_experts, config.num_experts_per_tok,
                              config.moe_intermediate_size, renormalize=config.norm_topk_prob)
