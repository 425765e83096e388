"""Torch reference twins of the mixture-of-experts ops in qinfer.ops: the CPU path and the test oracle.

Routing follows Hugging Face's Mixtral and Qwen3-MoE routers: softmax over all experts in
float32, the top_k largest, renormalised to sum to 1 when the family asks for it (Mixtral always;
Qwen3-MoE when norm_topk_prob). Mixtral's "softmax over the top-k logits" is the same number.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qinfer.ops.registry import register

_DEVICES = ("cpu", "cuda")


@register("topk_softmax", "torch", _DEVICES)
def topk_softmax(gating: torch.Tensor, top_k: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    probs = torch.softmax(gating.float(), dim=-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def max_padded_slots(num_slots: int, num_experts: int, block_size: int) -> int:
    """Length of sorted_token_ids: every used expert's row count rounded up to a block (at most
    min(num_slots, num_experts) experts are used), itself a whole number of blocks."""
    padded = num_slots + min(num_slots, num_experts) * (block_size - 1)
    return -(-padded // block_size) * block_size


@register("moe_align_block_size", "torch", _DEVICES)
def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int):
    """Slots (token t's k-th choice is slot t * top_k + k) grouped by expert, each expert's group
    padded to a multiple of block_size with the sentinel num_slots; in token order within a group."""
    flat = topk_ids.flatten().long()
    num_slots, device = flat.numel(), flat.device
    counts = torch.bincount(flat, minlength=num_experts)
    padded = (counts + block_size - 1) // block_size * block_size
    starts = padded.cumsum(0) - padded
    order = torch.argsort(flat, stable=True)
    expert_of = flat[order]
    rank = torch.arange(num_slots, device=device) - (counts.cumsum(0) - counts)[expert_of]
    length = max_padded_slots(num_slots, num_experts, block_size)
    sorted_ids = torch.full((length,), num_slots, dtype=torch.int32, device=device)
    sorted_ids[starts[expert_of] + rank] = order.to(torch.int32)
    expert_ids = torch.full((length // block_size,), -1, dtype=torch.int32, device=device)
    block_experts = torch.repeat_interleave(torch.arange(num_experts, device=device), padded // block_size)
    expert_ids[:block_experts.numel()] = block_experts.to(torch.int32)
    return sorted_ids, expert_ids, padded.sum().view(1).to(torch.int32)


@register("fused_experts", "torch", _DEVICES)
def fused_experts(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                  topk_ids: torch.Tensor) -> torch.Tensor:
    """sum_k topk_weights[t, k] * down_e(silu(gate_e(x_t)) * up_e(x_t)), e = topk_ids[t, k];
    summed in float32, rounded once."""
    out = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    for expert in topk_ids.unique().tolist():
        tokens, slots = torch.where(topk_ids == expert)
        gate, up = F.linear(hidden[tokens], w13[expert]).chunk(2, dim=-1)
        expert_out = F.linear(F.silu(gate) * up, w2[expert])
        out.index_add_(0, tokens, expert_out.float() * topk_weights[tokens, slots, None])
    return out.to(hidden.dtype)
