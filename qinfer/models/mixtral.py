"""Mixtral for causal LM: Llama's attention and layout, every MLP a sparse mixture of experts.

The router's softmax runs over all experts, the top num_experts_per_tok are kept and renormalised
(the same as a softmax over the top-k logits). Checkpoints name the block `block_sparse_moe` and
each expert's projections `experts.N.w1` (gate), `w3` (up), `w2` (down).
"""
from __future__ import annotations

from torch import nn

from qinfer.layers.moe import SparseMoeBlock
from qinfer.models.llama import LlamaForCausalLM


class MixtralForCausalLM(LlamaForCausalLM):
    packed_modules_mapping = {**LlamaForCausalLM.packed_modules_mapping, "block_sparse_moe": ("mlp", None)}
    # checkpoint expert projection -> (parameter of experts, shard id)
    expert_params_mapping = {"w1": ("w13_weight", 0), "w3": ("w13_weight", 1), "w2": ("w2_weight", None)}

    def make_mlp(self, config, layer_idx: int) -> nn.Module:
        return SparseMoeBlock(config.hidden_size, config.num_local_experts, config.num_experts_per_tok,
                              config.intermediate_size, renormalize=True)
