"""Load qinfer/_C*.so (built from csrc/ by qinfer.ops.build) and register its ops as "cuda".

Without the library nothing is registered and dispatch falls back to Triton or torch.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from qinfer.ops.registry import register

_CUDA = ("cuda",)
_PACKAGE = Path(__file__).resolve().parents[1]


def gemv_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """One row of 16-bit floats (a batch-1 decode step), contiguous, 16-byte vectors: there the GEMV
    of csrc/gemv.cu beats cuBLAS on the H200 (Llama-3.1-8B batch-1 forward 4.22 vs 4.50 ms,
    bench/NOTES.md); from two rows on, cuBLAS."""
    return (x.dim() == 2 and x.shape[0] == 1 and x.dtype in (torch.bfloat16, torch.float16)
            and weight.dtype == x.dtype and x.shape[1] % 8 == 0 and x.is_contiguous() and weight.is_contiguous()
            and x.data_ptr() % 16 == 0 and weight.data_ptr() % 16 == 0)


def experts_gemv_applies(hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
                         topk_ids: torch.Tensor) -> bool:
    """A few tokens (decode): csrc/moe/experts_gemv.cu reads each slot's expert rows directly, in
    two launches, where the grouped GEMMs pad every expert's rows to a 16-row tile and take four.
    It wins only while T * k <= E / 8: on the H200 (bench_moe.py's kernel part, config "gemv")
    Qwen3-30B-A3B's 128 experts / top-8 take 25 vs 37 us at one token, 46 vs 58 at two, tie at four;
    Mixtral's 8 / top-2, whose grouped GEMM streams at 92% of copy bandwidth already, 187 vs 180
    at one token (and a slot re-reads an expert another token also chose)."""
    num_slots = topk_ids.numel()
    return (num_slots * 8 <= w13.shape[0] and topk_ids.dtype == torch.int32 and topk_ids.is_contiguous()
            and topk_weights.dtype == torch.float32 and topk_weights.is_contiguous()
            and hidden.dtype in (torch.bfloat16, torch.float16) and w13.dtype == w2.dtype == hidden.dtype
            and hidden.shape[1] % 8 == 0 and w2.shape[2] % 8 == 0
            and all(t.is_contiguous() and t.data_ptr() % 16 == 0 for t in (hidden, w13, w2)))


def library_path() -> Path | None:
    found = sorted(_PACKAGE.glob("_C*.so"))
    return found[0] if found else None


def load() -> bool:
    """Load the library once and register the "cuda" implementations; False if not built."""
    if hasattr(torch.ops.qinfer, "rms_norm"):
        return True
    path = library_path()
    if path is None:
        return False
    torch.ops.load_library(str(path))
    _register()
    return True


def _register() -> None:
    ops = torch.ops.qinfer

    @register("rms_norm", "cuda", _CUDA)
    def rms_norm(x, weight, eps):
        return ops.rms_norm(x, weight, eps)

    @register("fused_add_rms_norm", "cuda", _CUDA)
    def fused_add_rms_norm(x, residual, weight, eps):
        ops.fused_add_rms_norm(x, residual, weight, eps)  # residual <- x + residual, x <- normed
        return x, residual

    @register("rotary_embedding", "cuda", _CUDA)
    def rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox=True):
        ops.rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)
        return query, key

    @register("silu_and_mul", "cuda", _CUDA)
    def silu_and_mul(x):
        return ops.silu_and_mul(x)

    @register("reshape_and_cache", "cuda", _CUDA)
    def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping):
        ops.reshape_and_cache(key, value, k_cache, v_cache, slot_mapping)

    if hasattr(ops, "gemv"):  # not in a _C.so built before it existed: cuBLAS serves every linear
        @register("linear", "cuda", _CUDA)
        def linear(x, weight, bias=None):
            if gemv_applies(x, weight):
                return ops.gemv(x, weight, bias)
            return F.linear(x, weight, bias)

    if hasattr(ops, "gemv_silu_and_mul"):
        @register("linear_silu_and_mul", "cuda", _CUDA)
        def linear_silu_and_mul(x, weight, bias=None):
            if gemv_applies(x, weight):   # one launch instead of two at one row
                return ops.gemv_silu_and_mul(x, weight, bias)
            return ops.silu_and_mul(F.linear(x, weight, bias))

    if hasattr(ops, "topk_softmax"):  # the MoE routing ops of csrc/moe (absent from older builds)
        register("topk_softmax", "cuda", _CUDA)(ops.topk_softmax)
        register("moe_align_block_size", "cuda", _CUDA)(ops.moe_align_block_size)

    if hasattr(ops, "moe_gate_up_gemv"):
        from qinfer.ops.fused_moe_triton import fused_experts_triton

        @register("fused_experts", "cuda", _CUDA)
        def fused_experts(hidden, w13, w2, topk_weights, topk_ids):
            if experts_gemv_applies(hidden, w13, w2, topk_weights, topk_ids):
                inter = ops.moe_gate_up_gemv(hidden, w13, topk_ids)
                return ops.moe_down_gemv(inter, w2, topk_weights, topk_ids)
            return fused_experts_triton(hidden, w13, w2, topk_weights, topk_ids)

    if not hasattr(ops, "rotary_and_cache"):  # a _C.so built before the op existed: Triton serves it
        return

    @register("rotary_and_cache", "cuda", _CUDA)
    def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                         cos_sin_cache, is_neox=True):
        ops.rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                             cos_sin_cache, is_neox)
        return query, key

    if not hasattr(ops, "qk_norm_rotary_and_cache"):
        return
    from qinfer.ops.composite import qk_norm_rotary_and_cache as unfused_qk_norm_rotary_and_cache

    @register("qk_norm_rotary_and_cache", "cuda", _CUDA)
    def qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                                 cos_sin_cache, is_neox, q_weight, k_weight, eps):
        if head_size not in (64, 128, 256) or q_weight.dtype != query.dtype or k_weight.dtype != query.dtype:
            return unfused_qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping,
                                                    head_size, cos_sin_cache, is_neox, q_weight, k_weight, eps)
        ops.qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                                     cos_sin_cache, is_neox, q_weight, k_weight, eps)
        return query, key
