"""Mixture-of-experts torch reference ops (the CPU path and the oracle of the GPU kernels) against
Hugging Face's Mixtral / Qwen3-MoE router and experts, and the alignment's invariants."""
from __future__ import annotations

import pytest
import torch
from transformers import MixtralConfig, Qwen3MoeConfig
from transformers.models.mixtral.modeling_mixtral import MixtralExperts, MixtralTopKRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from qinfer import ops
from qinfer.testing.moe_batch import check_alignment, random_routing


def mixtral_config(num_experts, top_k, hidden=32, inter=24):
    return MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=num_experts,
                         num_experts_per_tok=top_k)


@pytest.mark.parametrize("num_experts,top_k", [(8, 1), (8, 2), (16, 8)])
@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe-norm", "qwen3_moe-raw"])
def test_topk_softmax_matches_hf_routers(family, num_experts, top_k):
    gen = torch.Generator().manual_seed(num_experts * 10 + top_k)
    if family == "mixtral":
        router, renormalize = MixtralTopKRouter(mixtral_config(num_experts, top_k)), True
    else:
        renormalize = family.endswith("norm")
        router = Qwen3MoeTopKRouter(Qwen3MoeConfig(hidden_size=32, num_experts=num_experts,
                                                   num_experts_per_tok=top_k, norm_topk_prob=renormalize))
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=gen))
        hidden = torch.randn(37, 32, generator=gen)
        logits, expected_weights, expected_ids = router(hidden)
    weights, ids = ops.topk_softmax(logits, top_k, renormalize)
    assert ids.dtype == torch.int32 and weights.dtype == torch.float32
    assert torch.equal(ids.long(), expected_ids)
    torch.testing.assert_close(weights, expected_weights.float(), atol=1e-6, rtol=1e-6)
    if renormalize:
        torch.testing.assert_close(weights.sum(-1), torch.ones(37))


@pytest.mark.parametrize("num_tokens,top_k", [(1, 1), (1, 2), (9, 2), (40, 3)])
def test_fused_experts_reference_matches_hf_experts(num_tokens, top_k):
    num_experts = 6
    experts = MixtralExperts(mixtral_config(num_experts, top_k))
    gen = torch.Generator().manual_seed(num_tokens)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        hidden = torch.randn(num_tokens, 32, generator=gen)
        weights, ids = random_routing(num_tokens, top_k, num_experts, num_experts - 1, seed=num_tokens)
        expected = experts(hidden, ids.long(), weights)   # expert 5 is never chosen: an empty expert
    out = ops.fused_experts(hidden, experts.gate_up_proj.data, experts.down_proj.data, weights, ids)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_tokens,top_k,num_experts,block_size",
                         [(1, 1, 8, 16), (1, 2, 8, 16), (5, 2, 8, 4), (64, 8, 128, 16), (300, 2, 8, 64)])
def test_moe_align_block_size_reference(num_tokens, top_k, num_experts, block_size):
    _, topk_ids = random_routing(num_tokens, top_k, num_experts, max(num_experts // 2, top_k), seed=num_tokens)
    sorted_ids, expert_ids, num_post = ops.moe_align_block_size(topk_ids, num_experts, block_size)
    used = check_alignment(topk_ids, num_experts, block_size, sorted_ids, expert_ids, num_post)
    group = used[used < topk_ids.numel()]
    expert_of = topk_ids.flatten().long()[group]
    for e in expert_of.unique():   # the reference keeps token order inside a group
        members = group[expert_of == e]
        assert torch.equal(members, members.sort().values)
