"""Fused mixture-of-experts MLP in Triton: grouped GEMMs over the slots aligned by expert.

A slot is one (token, choice) pair: token t's k-th expert is slot t * top_k + k. After
ops.moe_align_block_size every block of BLOCK_M sorted slots belongs to one expert, so one
program computes a [BLOCK_M, BLOCK_N] tile of that expert's GEMM with gathered A rows:
  1. gate_up: inter[slot] = silu(x[token] . gate_e^T) * (x[token] . up_e^T), both halves of w13
     in one program (two accumulators over the same A tile), so the [T*k, 2I] product is never
     written; inter is [T*k, I].
  2. down:    y[slot] = topk_weight[slot] * inter[slot] . w2_e^T, [T*k, H];
then out[t] = sum_k y[t * top_k + k]. Accumulation in float32, one rounding per stored element.
Blocks past num_tokens_post_padded return at once: the grid is sized for the most blocks the
sizes allow, so the launch shape depends on T only and the kernels replay in CUDA graphs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from qinfer.ops.registry import dispatch, register


@triton.jit
def _moe_tile(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n, N, K, num_slots,
              stride_am, stride_be, stride_bn, stride_cm,
              SLOTS_PER_A_ROW: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr, EVEN_K: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] tile of sorted rows first_row.. and columns pid_n * BLOCK_N.. of one
    expert's GEMM (the kernel's docstring), stored."""
    offs_m = first_row + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_ids_ptr + offs_m)
    is_slot = slots < num_slots
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_bn = offs_n % N                    # wrapped, so B loads need no mask; stores are masked
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + (slots // SLOTS_PER_A_ROW).to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + expert * stride_be + offs_bn[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=is_slot[:, None], other=0.0)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=is_slot[:, None] & (offs_k[None, :] < k_left), other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc)
        if GATED:
            if EVEN_K:
                b_up = tl.load(b_ptrs + N * stride_bn)
            else:
                b_up = tl.load(b_ptrs + N * stride_bn, mask=offs_k[:, None] < k_left, other=0.0)
            acc_up = tl.dot(a, b_up, acc_up)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if GATED:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
    if WEIGHTED:
        acc = acc * tl.load(weights_ptr + slots, mask=is_slot, other=0.0)[:, None]
    c_ptrs = c_ptr + slots.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=is_slot[:, None] & (offs_n[None, :] < N))


@triton.jit
def _moe_gemm_kernel(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr, num_post_ptr,
                     N, K, num_slots, num_padded, stride_am, stride_be, stride_bn, stride_cm,
                     SLOTS_PER_A_ROW: tl.constexpr, GATED: tl.constexpr, WEIGHTED: tl.constexpr,
                     EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr, TAIL_M: tl.constexpr):
    """c[slot, n] = epilogue(a[slot // SLOTS_PER_A_ROW] . b[e, n]); GATED: b rows n and N + n are
    gate and up, c = silu(gate) * up; WEIGHTED: c *= weights[slot]. TAIL_M > 0: a block holding
    at most TAIL_M slots (an expert's last, padded block) runs a TAIL_M-row tile instead, so the
    padding's rows cost no tensor-core work (the slots lead their block, padding follows)."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(num_padded, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    # Grouped order: GROUP_M row blocks sweep the N tiles together, so their B tiles stay in L2.
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size
    if pid_m * BLOCK_M >= tl.load(num_post_ptr):
        return
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    first_row = pid_m * BLOCK_M
    if TAIL_M > 0 and tl.load(sorted_ids_ptr + first_row + TAIL_M) >= num_slots:
        _moe_tile(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n, N, K, num_slots,
                  stride_am, stride_be, stride_bn, stride_cm, SLOTS_PER_A_ROW, GATED, WEIGHTED, EVEN_K,
                  TAIL_M, BLOCK_N, BLOCK_K)
    else:
        _moe_tile(a_ptr, b_ptr, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n, N, K, num_slots,
                  stride_am, stride_be, stride_bn, stride_cm, SLOTS_PER_A_ROW, GATED, WEIGHTED, EVEN_K,
                  BLOCK_M, BLOCK_N, BLOCK_K)


def gemm_config(rows_per_expert: float) -> dict:
    """Tile sizes for the mean number of slots an expert gets: short row blocks (and long K steps)
    while the weights' bytes dominate (decode), large square tiles once the FLOPs do. GROUP_M 8
    everywhere: an expert with several row blocks reads each weight tile from DRAM once, the other
    blocks find it in L2 (GROUP_M 1 read Mixtral's experts twice at 256 tokens: 42% of copy
    bandwidth). Measured on the H200 by bench/bench_moe.py --sweep (bench/NOTES.md)."""
    if rows_per_expert <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4)
    if rows_per_expert < 256:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4)
    # Large: an expert's last block of at most 64 slots runs a 64-row tile (~half of them at
    # Qwen3-30B-A3B's ~256 slots an expert: gate/up 528 -> 500 us at 4,096 tokens), and the down
    # GEMM takes 256 columns in 3 stages (Qwen3 332 -> 276 us, Mixtral 2,037 -> 1,787 us).
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4, TAIL_M=64,
                down=dict(BLOCK_N=256, num_stages=3))


def gemm_configs(config: dict) -> tuple[dict, dict]:
    """(gate/up, down) launch configs of a gemm_config-shaped dict: its "down" entries override the
    down GEMM's; BLOCK_M and TAIL_M are the alignment's, so both GEMMs share them."""
    gate_up = {"TAIL_M": 0, **config}
    down_overrides = gate_up.pop("down", {})
    return gate_up, {**gate_up, **down_overrides}


def _moe_gemm(a, b, c, weights, aligned, num_slots, slots_per_a_row, gated, cfg):
    sorted_ids, expert_ids, num_post = aligned
    n = c.shape[1]
    k = a.shape[1]
    assert a.stride(1) == 1 and b.stride(2) == 1 and c.stride(1) == 1
    grid = (triton.cdiv(sorted_ids.numel(), cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _moe_gemm_kernel[grid](
        a, b, c, weights, sorted_ids, expert_ids, num_post, n, k, num_slots, sorted_ids.numel(),
        a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        SLOTS_PER_A_ROW=slots_per_a_row, GATED=gated, WEIGHTED=weights is not None,
        EVEN_K=k % cfg["BLOCK_K"] == 0, **cfg)


def fused_experts_triton(hidden, w13, w2, topk_weights, topk_ids, config: dict | None = None):
    """ops.fused_experts; `config` overrides gemm_config (benchmarks sweep it): the gate/up GEMM's
    tiles, with an optional "down" dict of the down GEMM's BLOCK_N, BLOCK_K, warps and stages
    (BLOCK_M and TAIL_M are the alignment's, shared)."""
    num_tokens, top_k = topk_ids.shape
    num_experts, inter = w13.shape[0], w2.shape[2]
    num_slots = num_tokens * top_k
    gate_up_cfg, down_cfg = gemm_configs(config or gemm_config(num_slots / num_experts))
    aligned = dispatch("moe_align_block_size", topk_ids)(topk_ids, num_experts, gate_up_cfg["BLOCK_M"])
    intermediate = torch.empty(num_slots, inter, dtype=hidden.dtype, device=hidden.device)
    _moe_gemm(hidden, w13, intermediate, None, aligned, num_slots, top_k, True, gate_up_cfg)
    out = torch.empty(num_slots, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    _moe_gemm(intermediate, w2, out, topk_weights.flatten(), aligned, num_slots, 1, False, down_cfg)
    if top_k == 1:
        return out
    return out.view(num_tokens, top_k, -1).sum(dim=1)


register("fused_experts", "triton", ("cuda",))(fused_experts_triton)
