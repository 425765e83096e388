"""A sparse mixture-of-experts MLP: a replicated router picks top_k experts per token; the experts'
weights are stacked per layer so one fused op (ops.fused_experts) runs all of them.

Tensor parallelism splits every expert's FFN width like a dense MLP: each rank holds all experts,
with its slice of gate and up rows (w13) and the matching columns of down (w2); the partial
outputs are summed across ranks (all-reduce). The router is tiny and replicated, so every rank
routes every token the same way.
"""
from __future__ import annotations

import torch
from torch import nn

from qinfer import ops
from qinfer.distributed.communication import tp_all_reduce
from qinfer.distributed.parallel_state import tp_rank as current_tp_rank
from qinfer.distributed.parallel_state import tp_size as current_tp_size
from qinfer.layers.linear import LinearBase, narrow_read


class FusedMoE(nn.Module):
    """Experts' weights: w13_weight [E, 2 * I_rank, H] (gate rows | up rows), w2_weight [E, H, I_rank].

    The checkpoint stores each expert's projections apart; weight_loader(param, tensor, expert_id,
    shard_id) reads this rank's slice of one of them: shard_id 0 (gate) or 1 (up) into w13,
    None into w2.
    """

    def __init__(self, num_experts: int, top_k: int, hidden_size: int, intermediate_size: int,
                 renormalize: bool, tp_rank: int | None = None, tp_size: int | None = None):
        super().__init__()
        self.tp_rank = current_tp_rank() if tp_rank is None else tp_rank
        self.tp_size = current_tp_size() if tp_size is None else tp_size
        self.num_experts, self.top_k, self.renormalize = num_experts, top_k, renormalize
        self.intermediate_size = intermediate_size // self.tp_size       # this rank's share
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.intermediate_size, hidden_size))
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.intermediate_size))
        self.w13_weight.weight_loader = self.w2_weight.weight_loader = self.weight_loader
        # Checkpoint tensors per parameter (gate and up of each expert; down of each), so a
        # checkpoint missing one expert's tensor fails to load instead of leaving garbage.
        self.w13_weight.num_checkpoint_tensors, self.w2_weight.num_checkpoint_tensors = 2 * num_experts, num_experts

    def weight_loader(self, param: nn.Parameter, loaded_weight, expert_id: int, shard_id=None) -> None:
        size = self.intermediate_size
        start = self.tp_rank * size
        if param is self.w2_weight:                      # down: [H, I], split on its input columns
            param.data[expert_id].copy_(narrow_read(loaded_weight, 1, start, size))
        else:                                            # gate or up: [I, H], split on its rows
            param.data[expert_id].narrow(0, shard_id * size, size).copy_(narrow_read(loaded_weight, 0, start, size))

    def forward(self, hidden: torch.Tensor, router_logits: torch.Tensor) -> torch.Tensor:
        """hidden [T, H], router_logits [T, E] -> [T, H]."""
        topk_weights, topk_ids = ops.topk_softmax(router_logits, self.top_k, self.renormalize)
        out = ops.fused_experts(hidden, self.w13_weight, self.w2_weight, topk_weights, topk_ids)
        if self.tp_size > 1:
            tp_all_reduce(out)
        return out


class SparseMoeBlock(nn.Module):
    """Router (`gate`, a replicated linear H -> E) and the experts, as Mixtral and Qwen3-MoE name them."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, intermediate_size: int,
                 renormalize: bool):
        super().__init__()
        self.gate = LinearBase(hidden_size, num_experts)
        self.experts = FusedMoE(num_experts, top_k, hidden_size, intermediate_size, renormalize)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.experts(hidden, self.gate(hidden))
