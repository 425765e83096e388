"""Random mixture-of-experts inputs and the alignment's invariants, shared by the CPU tests (torch
reference, Triton under the interpreter) and the GPU tests of the MoE ops."""
from __future__ import annotations

import torch

from qinfer.ops.moe_reference import max_padded_slots


def random_routing(num_tokens: int, top_k: int, num_experts: int, num_used: int, seed: int,
                   device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, k] float32, topk_ids [T, k] int32): k distinct experts per token drawn from the
    first num_used (the others stay empty), positive weights."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randperm(num_used, generator=gen)[:top_k] for _ in range(num_tokens)])
    weights = torch.rand(num_tokens, top_k, generator=gen) + 0.1
    return weights.to(device), ids.int().to(device)


def random_experts(num_tokens: int, hidden: int, inter: int, num_experts: int, dtype, seed: int, device="cpu"):
    """(hidden [T, H], w13 [E, 2I, H], w2 [E, H, I]) scaled so every stage is O(1)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=gen)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=gen) / hidden ** 0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=gen) / inter ** 0.5
    return tuple(t.to(device=device, dtype=dtype) for t in (x, w13, w2))


def check_alignment(topk_ids, num_experts, block_size, sorted_ids, expert_ids, num_post) -> torch.Tensor:
    """Assert every slot appears once, in a block of its own expert, experts in order, each group
    padded to whole blocks by the sentinel; returns the used part of sorted_ids (on the CPU)."""
    flat = topk_ids.flatten().long().cpu()
    num_slots = flat.numel()
    sorted_ids, expert_ids, total = sorted_ids.long().cpu(), expert_ids.long().cpu(), int(num_post.item())
    assert sorted_ids.numel() == max_padded_slots(num_slots, num_experts, block_size)
    counts = torch.bincount(flat, minlength=num_experts)
    assert total == int(((counts + block_size - 1) // block_size * block_size).sum())
    used = sorted_ids[:total]
    is_real = used < num_slots
    assert torch.equal(used[is_real].sort().values, torch.arange(num_slots))
    assert (sorted_ids[total:] == num_slots).all() and (used[~is_real] == num_slots).all()
    num_blocks = total // block_size
    assert (expert_ids[num_blocks:] == -1).all()
    assert torch.equal(expert_ids[:num_blocks].sort().values, expert_ids[:num_blocks])
    block_of_position = torch.arange(total) // block_size
    assert torch.equal(expert_ids[block_of_position[is_real]], flat[used[is_real]])
    return used
