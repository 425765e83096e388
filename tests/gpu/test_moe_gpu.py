"""Mixture-of-experts ops on a GPU against their torch twins: the compiled routing ops of csrc/moe
(top-k softmax, alignment by expert), the Triton fused experts kernel and the compiled experts
GEMVs that ops.fused_experts runs for a few tokens (csrc/moe/experts_gemv.cu), bf16.

Run on the device machine after `python -m qinfer.ops.build`:
    python -m pytest -m gpu tests/gpu/test_moe_gpu.py
"""
from __future__ import annotations

import pytest
import torch

from qinfer import ops
from qinfer.ops import moe_reference as ref
from qinfer.ops.compiled import experts_gemv_applies
from qinfer.testing.moe_batch import check_alignment, random_experts, random_routing
from qinfer.testing.paged_batch import rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def compiled():
    if ops.implementations("cuda").get("topk_softmax") != "cuda":
        pytest.skip("qinfer._C not built with csrc/moe (python -m qinfer.ops.build)")
    return torch.ops.qinfer


@pytest.fixture(scope="module")
def triton_moe():
    from qinfer.ops import fused_moe_triton as fused_moe
    return fused_moe


# (tokens, experts, top_k): one token, Mixtral's 8/2, Qwen3-MoE's 128/8, odd expert counts (each
# register width of the kernel: <= 32, 64, 128, 256 experts a row and past that; 500 keeps the
# logits below exact in bf16), top-40 and top-64 (two choices a lane).
ROUTER_CASES = [(1, 8, 2), (1, 128, 8), (1000, 8, 1), (1000, 8, 2), (777, 128, 8), (33, 60, 4), (9, 200, 40),
                (5, 300, 8), (3, 500, 64)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("renormalize", [True, False])
@pytest.mark.parametrize("num_tokens,num_experts,top_k", ROUTER_CASES)
def test_topk_softmax(compiled, num_tokens, num_experts, top_k, renormalize, dtype):
    # Distinct logits per row (k / 16, exact in bf16): no ties, whose order topk leaves open.
    gen = torch.Generator(device="cuda").manual_seed(num_tokens + num_experts)
    ranks = torch.rand(num_tokens, num_experts, device="cuda", generator=gen).argsort(dim=-1)
    gating = ((ranks - num_experts // 2) / 16).to(dtype)
    weights, ids = compiled.topk_softmax(gating, top_k, renormalize)
    expected_weights, expected_ids = ref.topk_softmax(gating, top_k, renormalize)
    assert torch.equal(ids, expected_ids)
    torch.testing.assert_close(weights, expected_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("num_experts,top_k", [(8, 2), (128, 8)])
def test_topk_softmax_keeps_ids_in_range_on_nan_and_inf_rows(compiled, num_experts, top_k):
    """A NaN or inf logit (an overflow upstream, an uninitialised capture input) makes the row's
    softmax NaN; the ids must still be k distinct experts (the experts' kernels index weights by
    them), and the NaN weights carry the fault on, as the reference's do."""
    gating = torch.randn(5, num_experts, device="cuda")
    gating[0, 3] = float("nan")
    gating[1, 1] = float("inf")
    gating[2] = float("nan")
    gating[3, 0] = float("-inf")                               # an ordinary row: -inf is probability 0
    weights, ids = compiled.topk_softmax(gating, top_k, True)
    assert bool(((ids >= 0) & (ids < num_experts)).all())
    assert all(len(set(row)) == top_k for row in ids.tolist())
    assert bool(weights[:3].isnan().all())
    expected_weights, expected_ids = ref.topk_softmax(gating[3:], top_k, True)
    assert torch.equal(ids[3:], expected_ids)
    torch.testing.assert_close(weights[3:], expected_weights, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("block_size", [16, 64, 128])
@pytest.mark.parametrize("num_tokens,top_k,num_experts,num_used",
                         [(1, 1, 8, 8), (1, 2, 8, 8), (1, 8, 128, 128), (256, 8, 128, 40),
                          (8192, 2, 8, 8), (8192, 8, 128, 128), (513, 2, 8, 3), (1024, 8, 128, 128),
                          (3001, 8, 64, 50)])
def test_moe_align_block_size(compiled, num_tokens, top_k, num_experts, num_used, block_size):
    _, topk_ids = random_routing(num_tokens, top_k, num_experts, num_used, seed=num_tokens, device="cuda")
    out = compiled.moe_align_block_size(topk_ids, num_experts, block_size)
    check_alignment(topk_ids, num_experts, block_size, *out)
    expected = ref.moe_align_block_size(topk_ids, num_experts, block_size)
    assert torch.equal(out[1], expected[1]) and torch.equal(out[2], expected[2])


def reference_bf16(x, w13, w2, weights, ids):
    """The torch twin on float32 copies of the bf16 inputs."""
    return ref.fused_experts(x.float(), w13.float(), w2.float(), weights, ids)


# (tokens, top_k, experts, experts used, hidden, intermediate): one token; top-1/2/8; empty experts;
# many tokens (every tile config of gemm_config is reached through the rows per expert); rows TMA
# cannot address (hidden 260, intermediate 100: not 16-byte multiples), which fall back to pointers.
FUSED_CASES = [(1, 2, 8, 8, 512, 768), (1, 8, 64, 64, 256, 384), (7, 1, 8, 2, 256, 384),
               (64, 2, 8, 8, 512, 512), (300, 8, 32, 20, 256, 384), (2000, 2, 8, 8, 512, 768),
               (4096, 1, 4, 4, 256, 256), (4096, 8, 128, 100, 256, 256), (50, 2, 8, 8, 260, 100)]


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("num_tokens,top_k,num_experts,num_used,hidden,inter", FUSED_CASES)
def test_fused_experts_triton(triton_moe, num_tokens, top_k, num_experts, num_used, hidden, inter, tma):
    x, w13, w2 = random_experts(num_tokens, hidden, inter, num_experts, torch.bfloat16, seed=num_tokens,
                                device="cuda")
    weights, ids = random_routing(num_tokens, top_k, num_experts, num_used, seed=num_tokens + 1, device="cuda")
    config = dict(triton_moe.gemm_config(num_tokens * top_k / num_experts), TMA=tma)
    out = triton_moe.fused_experts_triton(x, w13, w2, weights, ids, config=config)
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 1e-2


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
@pytest.mark.parametrize("rows_per_expert", [1, 32, 128, 1024])
def test_every_tile_config(triton_moe, rows_per_expert, tma):
    """Each config of gemm_config on one input (K not a multiple of BLOCK_K: hidden 320, inter 200)."""
    x, w13, w2 = random_experts(150, 320, 200, 8, torch.bfloat16, seed=3, device="cuda")
    weights, ids = random_routing(150, 2, 8, 6, seed=4, device="cuda")
    config = dict(triton_moe.gemm_config(rows_per_expert), TMA=tma)
    out = triton_moe.fused_experts_triton(x, w13, w2, weights, ids, config=config)
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 1e-2


# Tail tiles (an expert's last block of at most TAIL_M slots runs TAIL_M rows) beside full blocks,
# and the down GEMM's own tiles: 1,000 tokens x top-2 over 8 experts are ~250 slots an expert.
TAIL_CONFIGS = [dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=3, TAIL_M=64,
                     TMA=True, down=dict(BLOCK_N=256)),
                dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3, TAIL_M=32,
                     TMA=True, down=dict(BLOCK_K=128, num_stages=2)),
                dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=3, TAIL_M=32,
                     down=dict(BLOCK_K=128, num_stages=2))]


@pytest.mark.parametrize("config", TAIL_CONFIGS, ids=["tail64", "tail32", "tail32-pointers"])
def test_tail_tiles_and_down_tiles(triton_moe, config):
    x, w13, w2 = random_experts(1000, 320, 200, 8, torch.bfloat16, seed=5, device="cuda")
    weights, ids = random_routing(1000, 2, 8, 8, seed=6, device="cuda")
    out = triton_moe.fused_experts_triton(x, w13, w2, weights, ids, config=config)
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 1e-2


@pytest.mark.parametrize("tma", [True, False], ids=["tma", "pointers"])
def test_padding_rows_of_the_intermediate_stay_out_of_the_output(triton_moe, tma):
    """The gate/up GEMM leaves the padding rows of the sorted intermediate unwritten; NaN there (what
    an unwritten buffer may hold) must not reach the down GEMM's stored rows."""
    # ~125 slots an expert: one 128-row block, or a second one run as a 64-row tail tile
    x, w13, w2 = random_experts(500, 256, 384, 16, torch.bfloat16, seed=7, device="cuda")
    weights, ids = random_routing(500, 4, 16, 16, seed=8, device="cuda")
    config = dict(triton_moe.gemm_config(1024), TMA=tma)
    gate_up, down = triton_moe.gemm_configs(config)
    aligned = ops.moe_align_block_size(ids, 16, gate_up["BLOCK_M"])
    inter = triton_moe.moe_gate_up(x, w13, aligned, 4, gate_up)
    inter[aligned[0] >= ids.numel()] = float("nan")
    out = triton_moe.moe_sum(triton_moe.moe_down(inter, w2, weights, aligned, down), 4)
    assert not out.isnan().any()
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 1e-2


@pytest.mark.parametrize("num_tokens,top_k,hidden", [(1, 2, 4096), (1, 8, 2048), (3, 2, 200), (777, 8, 2048),
                                                     (4096, 8, 2048), (4096, 2, 4096), (100, 4, 3000)])
def test_moe_sum(triton_moe, num_tokens, top_k, hidden):
    """The k-sum against torch's float32 sum of the same rows: within the one bf16 rounding (and the
    float32 order of the adds), and the same bits on a second run."""
    gen = torch.Generator(device="cuda").manual_seed(num_tokens + top_k)
    y = torch.randn(num_tokens * top_k, hidden, device="cuda", generator=gen).to(torch.bfloat16)
    out = triton_moe.moe_sum(y, top_k)
    expected = y.float().view(num_tokens, top_k, hidden).sum(dim=1)
    torch.testing.assert_close(out.float(), expected, atol=1e-5, rtol=2 ** -8)
    assert torch.equal(triton_moe.moe_sum(y, top_k), out)                     # deterministic


# (tokens, top_k, experts, experts used, hidden, intermediate): Qwen3-30B-A3B's shape at one token,
# Mixtral's top-2 of 8, top-1, two tokens on the same experts, widths off the unroll (200 * 8 / 8).
GEMV_CASES = [(1, 8, 128, 128, 2048, 768), (1, 2, 8, 8, 1024, 3584), (3, 1, 8, 8, 256, 384),
              (2, 4, 8, 4, 512, 200), (4, 8, 64, 64, 264, 136), (8, 8, 16, 16, 256, 384)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("num_tokens,top_k,num_experts,num_used,hidden,inter", GEMV_CASES)
def test_experts_gemv(compiled, num_tokens, top_k, num_experts, num_used, hidden, inter, dtype):
    x, w13, w2 = random_experts(num_tokens, hidden, inter, num_experts, dtype, seed=num_tokens + hidden,
                                device="cuda")
    weights, ids = random_routing(num_tokens, top_k, num_experts, num_used, seed=inter, device="cuda")
    gate, up = torch.einsum("th,tkih->tki", x.float(), w13.float()[ids.long()]).chunk(2, dim=-1)
    expected_inter = (torch.nn.functional.silu(gate.to(dtype).float()) * up.to(dtype).float()).reshape(-1, inter)
    inter_out = compiled.moe_gate_up_gemv(x, w13, ids)
    assert rel_err(inter_out.float(), expected_inter) < 1e-2
    out = compiled.moe_down_gemv(inter_out, w2, weights, ids)
    expected = torch.einsum("tki,tkhi,tk->th", inter_out.float().view(num_tokens, top_k, inter),
                            w2.float()[ids.long()], weights)
    assert rel_err(out.float(), expected) < 1e-2
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 2e-2


def test_experts_gemv_rejects_what_it_cannot_read(compiled):
    x, w13, w2 = random_experts(1, 256, 384, 8, torch.bfloat16, seed=0, device="cuda")
    weights, ids = random_routing(1, 2, 8, 8, seed=0, device="cuda")
    with pytest.raises(RuntimeError, match="topk_ids"):
        compiled.moe_gate_up_gemv(x, w13, ids.long())
    with pytest.raises(RuntimeError, match="multiple of 8"):
        compiled.moe_gate_up_gemv(x[:, :252], w13[:, :, :252], ids)
    with pytest.raises(RuntimeError, match="topk_weights"):
        compiled.moe_down_gemv(compiled.moe_gate_up_gemv(x, w13, ids), w2, weights.half(), ids)


@pytest.mark.parametrize("num_tokens", [1, 24])
def test_moe_layer_replays_in_a_cuda_graph_with_new_routings(num_tokens):
    """Router, alignment and both GEMMs captured once; routing changes between replays."""
    from qinfer.layers.moe import SparseMoeBlock

    torch.manual_seed(0)
    with torch.device("cuda"):
        block = SparseMoeBlock(256, 16, 4, 384, renormalize=True).to(torch.bfloat16)
    for p in block.parameters():
        p.data.normal_(0, 0.05)
    static_x = torch.randn(num_tokens, 256, device="cuda", dtype=torch.bfloat16)
    block(static_x)                                       # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = block(static_x)
    for seed in range(3):
        static_x.copy_(torch.randn(num_tokens, 256, device="cuda", generator=torch.Generator("cuda").manual_seed(seed)))
        graph.replay()
        logits = torch.nn.functional.linear(static_x, block.gate.weight)
        weights, ids = ref.topk_softmax(logits, 4, True)
        expected = reference_bf16(static_x, block.experts.w13_weight, block.experts.w2_weight, weights, ids)
        assert rel_err(static_out.float(), expected) < 1e-2


def test_dispatch_uses_the_fast_implementations(compiled):
    impls = ops.implementations("cuda")
    assert (impls["topk_softmax"], impls["moe_align_block_size"], impls["fused_experts"]) == ("cuda", "cuda", "cuda")


@pytest.mark.parametrize("num_tokens", [1, 2, 3, 64])
def test_fused_experts_routes_by_token_count(compiled, num_tokens):
    """ops.fused_experts at Qwen3-MoE's 128 experts / top-8: the GEMVs to 2 tokens, the grouped
    GEMMs from 3; either way the reference's result."""
    x, w13, w2 = random_experts(num_tokens, 256, 384, 128, torch.bfloat16, seed=num_tokens, device="cuda")
    weights, ids = random_routing(num_tokens, 8, 128, 128, seed=num_tokens, device="cuda")
    assert experts_gemv_applies(x, w13, w2, weights, ids) == (num_tokens <= 2)
    out = ops.fused_experts(x, w13, w2, weights, ids)
    assert rel_err(out.float(), reference_bf16(x, w13, w2, weights, ids)) < 2e-2
