"""Torch reference twins of every op in qinfer.ops: clear, CPU+GPU, the test oracle.

Norms and rotary compute in float32 and cast back, like Hugging Face's Llama.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qinfer.ops.registry import register

_DEVICES = ("cpu", "cuda")


@register("linear", "torch", _DEVICES)
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return F.linear(x, weight, bias)


@register("rms_norm", "torch", _DEVICES)
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    normed = (x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)).to(x.dtype)
    return normed.mul_(weight)      # in place on the fresh tensor: one allocation fewer


@register("fused_add_rms_norm", "torch", _DEVICES)
def fused_add_rms_norm(x, residual, weight, eps):
    summed = x + residual
    return rms_norm(summed, weight, eps), summed


def _rotate_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox: bool) -> None:
    """Rotate x [T, H, D] in place; cos/sin [T, 1, D/2]. Neox pairs (i, i + D/2), GPT-J pairs
    (2i, 2i + 1). In place, with one temporary: on the CPU this op runs in every layer."""
    x1, x2 = x.chunk(2, dim=-1) if is_neox else (x[..., 0::2], x[..., 1::2])
    rotated1 = x1 * cos - x2 * sin
    x2.mul_(cos).addcmul_(x1, sin)
    x1.copy_(rotated1)


@register("rotary_embedding", "torch", _DEVICES)
def rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    cos, sin = cos_sin_cache.index_select(0, positions).float().unsqueeze(1).chunk(2, dim=-1)  # [T, 1, D/2]
    for x in (query, key):
        heads = x.view(x.shape[0], -1, head_size)
        rotated = heads.float()          # heads itself when float32, else a float32 copy
        _rotate_(rotated, cos, sin, is_neox)
        if rotated is not heads:
            heads.copy_(rotated)
    return query, key


@register("silu_and_mul", "torch", _DEVICES)
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate).mul_(up)


@register("linear_silu_and_mul", "torch", _DEVICES)
def linear_silu_and_mul(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    return silu_and_mul(F.linear(x, weight, bias))


@register("reshape_and_cache", "torch", _DEVICES)
def reshape_and_cache(key, value, k_cache, v_cache, slot_mapping) -> None:
    is_written = slot_mapping >= 0
    slots = slot_mapping[is_written].long()
    for new, cache in ((key, k_cache), (value, v_cache)):      # a token's slot is one row of the flat cache
        cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, new[is_written].to(cache.dtype))


@register("rotary_and_cache", "torch", _DEVICES)
def rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                     cos_sin_cache, is_neox=True):
    """rotary_embedding, then reshape_and_cache of the rotated key and the value: the fused op's meaning."""
    rotary_embedding(positions, query, key, head_size, cos_sin_cache, is_neox)
    num_kv_heads = key.shape[-1] // head_size
    reshape_and_cache(key.view(-1, num_kv_heads, head_size), value.view(-1, num_kv_heads, head_size),
                      k_cache, v_cache, slot_mapping)
    return query, key


@register("qk_norm_rotary_and_cache", "torch", _DEVICES)
def qk_norm_rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                             cos_sin_cache, is_neox, q_weight, k_weight, eps):
    """rms_norm of every query and key head (weights [D]), then rotary_and_cache (Qwen3's attention)."""
    query = rms_norm(query.reshape(-1, head_size), q_weight, eps).view(query.shape)
    key = rms_norm(key.reshape(-1, head_size), k_weight, eps).view(key.shape)
    return rotary_and_cache(positions, query, key, value, k_cache, v_cache, slot_mapping, head_size,
                            cos_sin_cache, is_neox)


@register("argmax", "torch", _DEVICES)
def argmax(x: torch.Tensor) -> torch.Tensor:
    return x.argmax(dim=-1)


@register("top_k_top_p_min_p", "torch", _DEVICES)
def top_k_top_p_min_p(logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
                      min_p: torch.Tensor | None) -> torch.Tensor:
    """min-p, then top-k, then top-p, each row of logits [S, V] float32 (None: off for every row).
    Tokens are ranked by logit, equal logits by token id (a stable sort):
      min_p [S]: drop tokens whose probability is below min_p * the top token's, computed as
        logit - max < log(min_p), which the Triton twin compares identically;
      top_k [S] long: keep the k first (k >= V: all);
      top_p [S]: keep, among those, the first tokens until their softmax mass reaches top_p: a
        token stays if the mass ranked before it is below top_p; the first always stays; 1: all."""
    neg_inf = float("-inf")
    if min_p is not None:
        below_min_p = logits - logits.amax(dim=-1, keepdim=True) < min_p.log().unsqueeze(1)
        logits = logits.masked_fill(below_min_p, neg_inf)
    if top_k is None and top_p is None:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(logits.shape[1], device=logits.device).unsqueeze(0)  # [1, V]
    is_dropped = torch.zeros_like(sorted_logits, dtype=torch.bool)
    if top_k is not None:
        is_dropped |= rank >= top_k.unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(is_dropped, neg_inf)
    if top_p is not None:
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked before
        is_dropped |= (mass_before >= top_p.unsqueeze(1)) & (rank > 0) & (top_p.unsqueeze(1) < 1)
    return logits.masked_fill(torch.empty_like(is_dropped).scatter_(1, order, is_dropped), neg_inf)
