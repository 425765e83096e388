"""Triton twins of the qinfer.ops hot ops, registered as "triton" for CUDA tensors.

Each does one pass over its tensors (one program per token row), computing in
float32 and rounding once, as the torch reference in qinfer/ops/reference.py
does. The compiled qinfer._C ops, when built, take precedence over these.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from qinfer.ops.registry import register

_CUDA = ("cuda",)


@triton.jit
def _rms_norm_kernel(out_ptr, x_ptr, res_ptr, w_ptr, stride_o, stride_x, stride_r, hidden, eps,
                     ADD: tl.constexpr, BLOCK: tl.constexpr):
    # ADD: x + residual first; the sum goes to res_ptr and the normed row to out_ptr.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < hidden
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if ADD:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(r.dtype)   # rounded once, like torch
        tl.store(res_ptr + row * stride_r + cols, x, mask=mask)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, 0) / hidden + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0)
    normed = (xf * inv).to(x.dtype).to(tl.float32) * w.to(tl.float32)
    tl.store(out_ptr + row * stride_o + cols, normed.to(out_ptr.dtype.element_ty), mask=mask)


def _norm_launch(out, x, res, weight, eps, add):
    hidden = x.shape[-1]
    assert x.stride(-1) == 1 and out.stride(-1) == 1
    _rms_norm_kernel[(x.shape[0],)](
        out, x, res, weight, out.stride(0), x.stride(0), res.stride(0), hidden, eps,
        ADD=add, BLOCK=triton.next_power_of_2(hidden), num_warps=8 if hidden >= 4096 else 4)


@register("rms_norm", "triton", _CUDA)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.empty_like(x)
    _norm_launch(out, x, x, weight, eps, add=False)
    return out


@register("fused_add_rms_norm", "triton", _CUDA)
def fused_add_rms_norm(x, residual, weight, eps):
    """In place: residual <- x + residual, x <- rms_norm(residual). Returns (x, residual)."""
    _norm_launch(x, x, residual, weight, eps, add=True)
    return x, residual


@triton.jit
def _silu_and_mul_kernel(out_ptr, x_ptr, stride_o, stride_x, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + inter + cols, mask=mask, other=0.0).to(tl.float32)
    out = gate / (1.0 + tl.exp(-gate)) * up
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


@register("silu_and_mul", "triton", _CUDA)
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2I] (gate | up) -> silu(gate) * up [T, I]."""
    inter = x.shape[-1] // 2
    out = torch.empty(x.shape[:-1] + (inter,), dtype=x.dtype, device=x.device)
    block = 1024
    _silu_and_mul_kernel[(x.shape[0], triton.cdiv(inter, block))](
        out, x, out.stride(0), x.stride(0), inter, BLOCK=block)
    return out


@register("linear_silu_and_mul", "triton", _CUDA)
def linear_silu_and_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return silu_and_mul(F.linear(x, weight, bias))


@triton.jit
def _rotate_heads(base, heads, first, second, cos, sin, cache_base, cache_heads,
                  HEAD: tl.constexpr, HEADS_PAD: tl.constexpr, CACHE: tl.constexpr):
    # base: one token's row of heads*HEAD elements; pairs (first[j], second[j]) rotate by angle j.
    # CACHE: the first cache_heads rotated heads (all, or 0 for a token without a slot) also go
    # to cache_base, the token's [heads, HEAD] cache row.
    h = tl.arange(0, HEADS_PAD)
    ptrs = base + h[:, None] * HEAD                                          # [HEADS_PAD, 1]
    mask = (h < heads)[:, None]
    x1 = tl.load(ptrs + first[None, :], mask=mask, other=0.0)
    x2 = tl.load(ptrs + second[None, :], mask=mask, other=0.0)
    x1f, x2f = x1.to(tl.float32), x2.to(tl.float32)
    y1 = (x1f * cos - x2f * sin).to(x1.dtype)
    y2 = (x2f * cos + x1f * sin).to(x1.dtype)
    tl.store(ptrs + first[None, :], y1, mask=mask)
    tl.store(ptrs + second[None, :], y2, mask=mask)
    if CACHE:
        cache_ptrs = cache_base + h[:, None] * HEAD
        cmask = (h < cache_heads)[:, None]
        tl.store(cache_ptrs + first[None, :], y1.to(cache_base.dtype.element_ty), mask=cmask)
        tl.store(cache_ptrs + second[None, :], y2.to(cache_base.dtype.element_ty), mask=cmask)


@triton.jit
def _rotary_kernel(q_ptr, k_ptr, pos_ptr, cache_ptr, stride_q, stride_k, stride_c,
                   num_q_heads, num_k_heads,
                   v_ptr, k_cache_ptr, v_cache_ptr, slot_ptr, stride_v, stride_kb, stride_kt,
                   stride_vb, stride_vt,
                   HEAD: tl.constexpr, HEADS_PAD: tl.constexpr, NEOX: tl.constexpr,
                   CACHE: tl.constexpr, BLOCK_SIZE: tl.constexpr, WIDTH_PAD: tl.constexpr):
    # One token: rotate its query and key heads, pairs (i, i + D/2) (neox) or (2i, 2i+1).
    # CACHE (rotary_and_cache): also write the rotated key and the value to the token's
    # cache slot, unless the slot is negative; the v_/cache arguments are unused otherwise.
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok)
    i = tl.arange(0, HEAD // 2)
    cos = tl.load(cache_ptr + pos * stride_c + i).to(tl.float32)[None, :]   # [1, D/2]
    sin = tl.load(cache_ptr + pos * stride_c + HEAD // 2 + i).to(tl.float32)[None, :]
    if NEOX:
        first = i
        second = i + HEAD // 2
    else:
        first = 2 * i
        second = 2 * i + 1
    _rotate_heads(q_ptr + tok * stride_q, num_q_heads, first, second, cos, sin, q_ptr, 0,
                  HEAD, HEADS_PAD, False)
    if CACHE:
        slot = tl.load(slot_ptr + tok).to(tl.int64)
        num_written = tl.where(slot >= 0, num_k_heads, 0)   # negative slot: write nothing
        row = tl.maximum(slot, 0)                           # a valid address; stores are masked
        k_row = k_cache_ptr + (row // BLOCK_SIZE) * stride_kb + (row % BLOCK_SIZE) * stride_kt
        v_row = v_cache_ptr + (row // BLOCK_SIZE) * stride_vb + (row % BLOCK_SIZE) * stride_vt
        _rotate_heads(k_ptr + tok * stride_k, num_k_heads, first, second, cos, sin, k_row, num_written,
                      HEAD, HEADS_PAD, True)
        cols = tl.arange(0, WIDTH_PAD)
        vmask = cols < num_written * HEAD
        v = tl.load(v_ptr + tok * stride_v + cols, mask=vmask)
        tl.store(v_row + cols, v.to(v_cache_ptr.dtype.element_ty), mask=vmask)
    else:
        _rotate_heads(k_ptr + tok * stride_k, num_k_heads, first, second, cos, sin, k_ptr, 0,
                      HEAD, HEADS_PAD, False)


def _rotary_launch(positions, query, key, head_size, cos_sin_cache, is_neox, kv=None):
    """Shared launch: kv = (value, k_cache, v_cache, slot_mapping) for rotary_and_cache,
    None for rotary_embedding."""
    num_q, num_k = query.shape[-1] // head_size, key.shape[-1] // head_size
    assert query.stride(-1) == 1 and key.stride(-1) == 1 and cos_sin_cache.stride(-1) == 1
    if kv is None:  # the kernel reads no cache argument: placeholders
        value, k_cache, v_cache, slot_mapping = key, key, key, positions
        cache_strides, block_size = (0, 0, 0, 0), 1
    else:
        value, k_cache, v_cache, slot_mapping = kv
        assert value.stride(-1) == 1 and _heads_contiguous(k_cache[0]) and _heads_contiguous(v_cache[0])
        cache_strides = (k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1))
        block_size = k_cache.shape[1]
    _rotary_kernel[(positions.shape[0],)](
        query, key, positions, cos_sin_cache, query.stride(0), key.stride(0), cos_sin_cache.stride(0),
        num_q, num_k, value, k_cache, v_cache, slot_mapping, value.stride(0), *cache_strides,
        HEAD=head_size, HEADS_PAD=triton.next_power_of_2(max(num_q, num_k)), NEOX=is_neox,
        CACHE=kv is not None, BLOCK_SIZE=block_size, WIDTH_PAD=triton.next_power_of_2(num_k * head_size))
    return query, key


@register("rotary_embedding", "triton", _CUDA)
def rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    """In place on query [T, Hq*D] and key [T, Hk*D] (rows contiguous); returns them."""
    return _rotary_launch(positions, query, key, head_size, cos_sin_cache, is_neox)


@register("rotary_and_cache", "triton", _CUDA)
def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                     cos_sin_cache, is_neox=True):
    """rotary_embedding, and the rotated key and value [T, Hk*D] into the caches at slot_mapping [T]."""
    return _rotary_launch(positions, query, key, head_size, cos_sin_cache, is_neox,
                          (value, k_cache, v_cache, slot_mapping))


@triton.jit
def _reshape_and_cache_kernel(key_ptr, value_ptr, k_cache_ptr, v_cache_ptr, slot_ptr,
                              stride_k, stride_v, stride_kb, stride_kt, stride_vb, stride_vt,
                              width, BLOCK_SIZE: tl.constexpr, WIDTH_PAD: tl.constexpr):
    # One token: copy its Hk*D contiguous key and value elements into its cache slot.
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + tok).to(tl.int64)
    if slot < 0:
        return
    blk, off = slot // BLOCK_SIZE, slot % BLOCK_SIZE
    cols = tl.arange(0, WIDTH_PAD)
    mask = cols < width
    k = tl.load(key_ptr + tok * stride_k + cols, mask=mask)
    v = tl.load(value_ptr + tok * stride_v + cols, mask=mask)
    tl.store(k_cache_ptr + blk * stride_kb + off * stride_kt + cols,
             k.to(k_cache_ptr.dtype.element_ty), mask=mask)
    tl.store(v_cache_ptr + blk * stride_vb + off * stride_vt + cols,
             v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def _heads_contiguous(x: torch.Tensor) -> bool:
    """[T, H, D] whose H*D elements of one token are contiguous (a row of a fused qkv is)."""
    return x.stride(2) == 1 and x.stride(1) == x.shape[2]


@register("reshape_and_cache", "triton", _CUDA)
def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    """key/value [T, Hk, D] -> caches [num_blocks, block_size, Hk, D] at slot_mapping [T]."""
    assert _heads_contiguous(key) and _heads_contiguous(value)
    assert _heads_contiguous(k_cache[0]) and _heads_contiguous(v_cache[0])
    width = key.shape[1] * key.shape[2]
    _reshape_and_cache_kernel[(key.shape[0],)](
        key, value, k_cache, v_cache, slot_mapping, key.stride(0), value.stride(0),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        width, BLOCK_SIZE=k_cache.shape[1], WIDTH_PAD=triton.next_power_of_2(width))
