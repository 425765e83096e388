"""The Triton fused-MoE kernel on the CPU under TRITON_INTERPRET=1, tiny shapes, against the torch
reference (float32); the one test that runs in the main process re-runs this file in a child
pytest with the variable set (tests/triton_interpreter.py)."""
from __future__ import annotations

import pytest
import torch

from qinfer.ops.moe_reference import fused_experts
from qinfer.testing.moe_batch import random_experts, random_routing
from qinfer.testing.paged_batch import rel_err
from tests.triton_interpreter import in_parent_only, needs_interpret, rerun_under_interpreter

pytest.importorskip("triton")

TINY = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16, GROUP_M=2, num_warps=1, num_stages=1)
# Blocks of at most 16 slots run the 16-row tail tile; the down GEMM with its own column tiles.
TAIL = dict(TINY, BLOCK_M=32, TAIL_M=16, down=dict(BLOCK_N=32, BLOCK_K=16))


@in_parent_only
def test_kernel_under_interpreter():
    rerun_under_interpreter(__file__)


# (tokens, top_k, experts, experts used, hidden, intermediate): one token; empty experts; K not a
# multiple of BLOCK_K (hidden 40, intermediate 24); N tiles past the edge; top-1.
CASES = [(1, 2, 4, 4, 32, 16), (7, 2, 8, 3, 40, 24), (20, 4, 6, 6, 32, 48), (9, 1, 4, 2, 16, 32)]


@needs_interpret
@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("config", [TINY, TAIL], ids=["tiny", "tail"])
@pytest.mark.parametrize("num_tokens,top_k,num_experts,num_used,hidden,inter", CASES)
def test_fused_experts_matches_reference(num_tokens, top_k, num_experts, num_used, hidden, inter, config, tma):
    from qinfer.ops.fused_moe_triton import fused_experts_triton

    x, w13, w2 = random_experts(num_tokens, hidden, inter, num_experts, torch.float32, seed=num_tokens)
    weights, ids = random_routing(num_tokens, top_k, num_experts, num_used, seed=num_tokens + 1)
    out = fused_experts_triton(x, w13, w2, weights, ids, config=dict(config, TMA=tma))
    assert rel_err(out, fused_experts(x, w13, w2, weights, ids)) < 1e-5


@needs_interpret
@pytest.mark.parametrize("num_tokens,top_k,hidden", [(1, 2, 24), (5, 8, 40), (3, 3, 1500)])
def test_moe_sum_matches_torch(num_tokens, top_k, hidden):
    """The k-sum (H past one block of 1,024 columns too) against torch's sum over k."""
    from qinfer.ops.fused_moe_triton import moe_sum

    y = torch.randn(num_tokens * top_k, hidden, generator=torch.Generator().manual_seed(hidden))
    torch.testing.assert_close(moe_sum(y, top_k), y.view(num_tokens, top_k, hidden).sum(dim=1))
