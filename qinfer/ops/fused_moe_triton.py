"""Fused mixture-of-experts MLP in Triton: grouped GEMMs over the slots aligned by expert.

A slot is one (token, choice) pair: token t's k-th expert is slot t * top_k + k. After
ops.moe_align_block_size every block of BLOCK_M sorted slots belongs to one expert, so one
program computes a [BLOCK_M, BLOCK_N] tile of that expert's GEMM:
  1. gate_up: inter[p] = silu(x[token] . gate_e^T) * (x[token] . up_e^T) for the slot at sorted
     position p, A rows gathered by token, both halves of w13 in one program (two accumulators
     over the same A tile), so the [T*k, 2I] product is never written. inter is in sorted order
     ([P, I], P = len(sorted_ids); padding rows left unwritten, their products never stored), so
  2. down:    y[slot] = topk_weight[slot] * inter[p] . w2_e^T reads whole row blocks of inter,
     [T*k, H] by slot;
  3. out[t] = sum_k y[t * top_k + k], a bandwidth-bound kernel of its own. (Not folded into the
     down GEMM: a token's k slots lie in k experts' blocks, so the sum there would take atomics,
     whose order, and so the rounding, changes from run to run.)
Accumulation in float32, one rounding per stored element. Where the strides allow, the weights
(and the down GEMM's contiguous A rows) are loaded by TMA through tensor descriptors; the gathered
A rows of the gate/up GEMM always by pointers (TMA on Hopper has no row gather).
Blocks past num_tokens_post_padded return at once: the grid is sized for the most blocks the
sizes allow, so the launch shape depends on T only and the kernels replay in CUDA graphs.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from qinfer.ops.registry import dispatch, register


@triton.jit
def _moe_tile(a_ptr, a_desc, b_ptr, b_desc, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n,
              N, K, num_slots, stride_am, stride_be, stride_bn, stride_cm,
              GATE_UP: tl.constexpr, SLOTS_PER_A_ROW: tl.constexpr, EVEN_K: tl.constexpr, TMA: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The [BLOCK_M, BLOCK_N] tile of sorted rows first_row.. and columns pid_n * BLOCK_N.. of one
    expert's GEMM (the kernel's docstring), stored."""
    offs_m = first_row + tl.arange(0, BLOCK_M)
    slots = tl.load(sorted_ids_ptr + offs_m)
    is_slot = slots < num_slots
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    if GATE_UP:
        a_rows = slots // SLOTS_PER_A_ROW       # the tokens' rows of hidden
    else:
        # The sorted rows of inter, contiguous. Its padding rows (never written) load as zeros by
        # pointers, as whatever they hold by TMA: either way they reach only their own output rows,
        # which are never stored.
        a_rows = offs_m
    a_ptrs = a_ptr + a_rows.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    # Pointers: columns wrapped, so B loads need no mask. TMA: the descriptor is w viewed [E * rows, K];
    # rows past N read the next half or expert (or the zero fill past the end), columns past K zeros.
    b_ptrs = b_ptr + expert * stride_be + (offs_n % N)[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    b_row = (expert * (stride_be // stride_bn) + pid_n * BLOCK_N).to(tl.int32)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        k0 = k * BLOCK_K
        k_mask = offs_k < K - k0
        if TMA and not GATE_UP:
            a = a_desc.load([first_row, k0])
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=is_slot[:, None], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=is_slot[:, None] & k_mask[None, :], other=0.0)
        if TMA:
            b = b_desc.load([b_row, k0]).T
        elif EVEN_K:
            b = tl.load(b_ptrs)
        else:
            b = tl.load(b_ptrs, mask=k_mask[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        if GATE_UP:
            if TMA:
                b_up = b_desc.load([b_row + N, k0]).T
            elif EVEN_K:
                b_up = tl.load(b_ptrs + N * stride_bn)
            else:
                b_up = tl.load(b_ptrs + N * stride_bn, mask=k_mask[:, None], other=0.0)
            acc_up = tl.dot(a, b_up, acc_up)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    if GATE_UP:
        acc = acc / (1.0 + tl.exp(-acc)) * acc_up
        c_rows = offs_m
    else:
        acc = acc * tl.load(weights_ptr + slots, mask=is_slot, other=0.0)[:, None]
        c_rows = slots
    c_ptrs = c_ptr + c_rows.to(tl.int64)[:, None] * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=is_slot[:, None] & (offs_n[None, :] < N))


@triton.jit
def _moe_gemm_kernel(a_ptr, a_desc, a_tail_desc, b_ptr, b_desc, c_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                     num_post_ptr, N, K, num_slots, num_padded, stride_am, stride_be, stride_bn, stride_cm,
                     GATE_UP: tl.constexpr, SLOTS_PER_A_ROW: tl.constexpr, EVEN_K: tl.constexpr, TMA: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                     TAIL_M: tl.constexpr):
    """GATE_UP: c[p, n] = silu(a[slot // SLOTS_PER_A_ROW] . b[e, n]) * (a[..] . b[e, N + n]) for the slot
    at sorted position p; else c[slot, n] = weights[slot] * a[p] . b[e, n]. TAIL_M > 0: a block
    holding at most TAIL_M slots (an expert's last, padded block) runs a TAIL_M-row tile instead,
    so the padding's rows cost no tensor-core work (the slots lead their block, padding follows)."""
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
        _moe_tile(a_ptr, a_tail_desc, b_ptr, b_desc, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n,
                  N, K, num_slots, stride_am, stride_be, stride_bn, stride_cm, GATE_UP, SLOTS_PER_A_ROW, EVEN_K,
                  TMA, TAIL_M, BLOCK_N, BLOCK_K)
    else:
        _moe_tile(a_ptr, a_desc, b_ptr, b_desc, c_ptr, weights_ptr, sorted_ids_ptr, expert, first_row, pid_n,
                  N, K, num_slots, stride_am, stride_be, stride_bn, stride_cm, GATE_UP, SLOTS_PER_A_ROW, EVEN_K,
                  TMA, BLOCK_M, BLOCK_N, BLOCK_K)


@triton.jit
def _moe_sum_kernel(y_ptr, out_ptr, H, TOP_K: tl.constexpr, BLOCK_H: tl.constexpr):
    """out[t, h] = sum_k y[t * TOP_K + k, h], in float32 in the order of k (deterministic), one rounding."""
    t = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = offs < H
    rows = y_ptr + t * TOP_K * H + offs
    acc = tl.load(rows, mask=mask).to(tl.float32)
    for k in tl.static_range(1, TOP_K):
        acc += tl.load(rows + k * H, mask=mask).to(tl.float32)
    tl.store(out_ptr + t * H + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


def gemm_config(rows_per_expert: float) -> dict:
    """Tile sizes for the mean number of slots an expert gets: short row blocks (and long K steps)
    while the weights' bytes dominate (decode), large square tiles once the FLOPs do. GROUP_M 8
    everywhere: an expert with several row blocks reads each weight tile from DRAM once, the other
    blocks find it in L2 (GROUP_M 1 read Mixtral's experts twice at 256 tokens: 42% of copy
    bandwidth). TMA: load the weights (and the down GEMM's A rows) through tensor descriptors where
    the strides allow. Measured on the H200 by bench/bench_moe.py --sweep (bench/NOTES.md)."""
    if rows_per_expert <= 16:
        return dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4, TMA=True)
    if rows_per_expert <= 64:
        return dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4, TMA=True)
    if rows_per_expert < 256:
        return dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4, TMA=True)
    # Large: an expert's last block of at most 64 slots runs a 64-row tile (~half of them at
    # Qwen3-30B-A3B's ~256 slots an expert: gate/up 528 -> 500 us at 4,096 tokens), and the down
    # GEMM takes 256 columns (Qwen3 332 -> 276 us, Mixtral 2,037 -> 1,787 us), in 4 stages once
    # its tiles come by TMA (Qwen3 252 -> 244 us; 3 were best by pointers).
    return dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=8, num_stages=4, TAIL_M=64, TMA=True,
                down=dict(BLOCK_N=256, num_stages=4))


def gemm_configs(config: dict) -> tuple[dict, dict]:
    """(gate/up, down) launch configs of a gemm_config-shaped dict: its "down" entries override the
    down GEMM's; BLOCK_M and TAIL_M are the alignment's, so both GEMMs share them."""
    gate_up = {"TAIL_M": 0, "TMA": False, **config}
    down_overrides = gate_up.pop("down", {})
    return gate_up, {**gate_up, **down_overrides}


def _tma_addressable(*tensors: torch.Tensor) -> bool:
    """Whether TMA can read these contiguous tensors as 2-D row blocks: 16-byte aligned starts and
    rows (a CUDA device or the interpreter's CPU tensors)."""
    return all(t.is_contiguous() and t.data_ptr() % 16 == 0 and t.shape[-1] * t.element_size() % 16 == 0
               for t in tensors)


def _moe_gemm(a, b, c, weights, aligned, num_slots, gate_up, slots_per_a_row, cfg):
    """One grouped GEMM (the kernel's docstring) with the launch config cfg."""
    sorted_ids, expert_ids, num_post = aligned
    cfg = dict(cfg)
    n, k = c.shape[1], a.shape[1]
    assert a.stride(1) == 1 and b.stride(2) == 1 and c.stride(1) == 1
    tma = cfg.pop("TMA") and _tma_addressable(b) and (gate_up or _tma_addressable(a))
    a_desc = a_tail_desc = b_desc = None
    if tma:
        b_desc = TensorDescriptor.from_tensor(b.flatten(0, 1), [cfg["BLOCK_N"], cfg["BLOCK_K"]])
        if not gate_up:
            a_desc = TensorDescriptor.from_tensor(a, [cfg["BLOCK_M"], cfg["BLOCK_K"]])
            if cfg["TAIL_M"]:
                a_tail_desc = TensorDescriptor.from_tensor(a, [cfg["TAIL_M"], cfg["BLOCK_K"]])
    grid = (triton.cdiv(sorted_ids.numel(), cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _moe_gemm_kernel[grid](
        a, a_desc, a_tail_desc, b, b_desc, c, weights, sorted_ids, expert_ids, num_post, n, k, num_slots,
        sorted_ids.numel(), a.stride(0), b.stride(0), b.stride(1), c.stride(0),
        GATE_UP=gate_up, SLOTS_PER_A_ROW=slots_per_a_row, EVEN_K=k % cfg["BLOCK_K"] == 0, TMA=tma, **cfg)


def moe_gate_up(hidden, w13, aligned, top_k, cfg):
    """[P, I] intermediate in sorted order (rows of padding left unwritten)."""
    inter = torch.empty(aligned[0].numel(), w13.shape[1] // 2, dtype=hidden.dtype, device=hidden.device)
    _moe_gemm(hidden, w13, inter, None, aligned, hidden.shape[0] * top_k, True, top_k, cfg)
    return inter


def moe_down(inter, w2, topk_weights, aligned, cfg):
    """[T * k, H]: each slot's expert output times its routing weight, by slot."""
    num_slots = topk_weights.numel()
    out = torch.empty(num_slots, w2.shape[1], dtype=inter.dtype, device=inter.device)
    _moe_gemm(inter, w2, out, topk_weights.flatten(), aligned, num_slots, False, 1, cfg)
    return out


def moe_sum(y: torch.Tensor, top_k: int) -> torch.Tensor:
    """[T, H] sums of each token's top_k rows of y [T * k, H]. At 4,096 tokens on the H200: 41 us
    (87% of copy bandwidth) for Qwen3-30B-A3B's top-8, 29 us (82%) for Mixtral's top-2, where
    torch's sum over the middle dimension took 55 us (65%) and 74 us (32%)."""
    hidden = y.shape[1]
    out = torch.empty(y.shape[0] // top_k, hidden, dtype=y.dtype, device=y.device)
    block_h = min(triton.next_power_of_2(hidden), 1024)
    _moe_sum_kernel[(out.shape[0], triton.cdiv(hidden, block_h))](y, out, hidden, TOP_K=top_k, BLOCK_H=block_h,
                                                                  num_warps=4)
    return out


def fused_experts_triton(hidden, w13, w2, topk_weights, topk_ids, config: dict | None = None):
    """ops.fused_experts; `config` overrides gemm_config (benchmarks sweep it): the gate/up GEMM's
    tiles, with an optional "down" dict of the down GEMM's BLOCK_N, BLOCK_K, warps and stages
    (BLOCK_M and TAIL_M are the alignment's, shared); TMA False loads every tile by pointers."""
    num_tokens, top_k = topk_ids.shape
    gate_up_cfg, down_cfg = gemm_configs(config or gemm_config(num_tokens * top_k / w13.shape[0]))
    aligned = dispatch("moe_align_block_size", topk_ids)(topk_ids, w13.shape[0], gate_up_cfg["BLOCK_M"])
    inter = moe_gate_up(hidden, w13, aligned, top_k, gate_up_cfg)
    y = moe_down(inter, w2, topk_weights, aligned, down_cfg)
    return y if top_k == 1 else moe_sum(y, top_k)


register("fused_experts", "triton", ("cuda",))(fused_experts_triton)
