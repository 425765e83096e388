"""The torch reference ops (the kernels' oracle) against straightforward formulas."""
from __future__ import annotations

import math

import pytest
import torch

from qinfer import ops
from qinfer.ops import reference as ref

torch.manual_seed(0)


def test_rms_norm():
    x, w = torch.randn(5, 16), torch.randn(16)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(ref.rms_norm(x, w, 1e-6), expected)


def test_fused_add_rms_norm():
    x, residual, w = torch.randn(5, 16), torch.randn(5, 16), torch.randn(16)
    normed, summed = ref.fused_add_rms_norm(x.clone(), residual.clone(), w, 1e-6)
    torch.testing.assert_close(summed, x + residual)
    torch.testing.assert_close(normed, ref.rms_norm(x + residual, w, 1e-6))


def rotate_pair_by_pair(vec: torch.Tensor, pos: int, inv_freq: torch.Tensor, is_neox: bool) -> torch.Tensor:
    """Rotate each (even, odd) or (i, i + D/2) pair of one head vector by pos * freq, as 2-D rotations."""
    out, half = vec.clone(), vec.shape[0] // 2
    for i in range(half):
        a, b = (i, i + half) if is_neox else (2 * i, 2 * i + 1)
        angle = pos * inv_freq[i].item()
        out[a] = vec[a] * math.cos(angle) - vec[b] * math.sin(angle)
        out[b] = vec[b] * math.cos(angle) + vec[a] * math.sin(angle)
    return out


@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_embedding(is_neox):
    num_tokens, head_size, num_heads, num_kv_heads = 3, 8, 2, 1
    inv_freq = 1.0 / 10000 ** (torch.arange(0, head_size, 2).float() / head_size)
    angles = torch.outer(torch.arange(32).float(), inv_freq)
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    positions = torch.tensor([0, 5, 31])
    q, k = torch.randn(num_tokens, num_heads * head_size), torch.randn(num_tokens, num_kv_heads * head_size)
    expected_q = [rotate_pair_by_pair(h, p.item(), inv_freq, is_neox)
                  for t, p in enumerate(positions) for h in q[t].view(num_heads, head_size)]
    q_out, k_out = ref.rotary_embedding(positions, q.clone(), k.clone(), head_size, cache, is_neox)
    torch.testing.assert_close(q_out.view(-1, head_size), torch.stack(expected_q))
    torch.testing.assert_close(k_out[2], rotate_pair_by_pair(k[2], 31, inv_freq, is_neox))


def test_silu_and_mul():
    x = torch.randn(4, 10)
    gate, up = x[:, :5], x[:, 5:]
    torch.testing.assert_close(ref.silu_and_mul(x), gate / (1 + torch.exp(-gate)) * up)


def test_reshape_and_cache_writes_slots_and_skips_negative():
    num_blocks, block_size, heads, head_size = 3, 4, 2, 8
    k_cache, v_cache = (torch.zeros(num_blocks, block_size, heads, head_size) for _ in range(2))
    key, value = torch.randn(3, heads, head_size), torch.randn(3, heads, head_size)
    ref.reshape_and_cache(key, value, k_cache, v_cache, torch.tensor([9, -1, 2]))
    torch.testing.assert_close(k_cache[2, 1], key[0])
    torch.testing.assert_close(v_cache[0, 2], value[2])
    assert int((k_cache != 0).any(-1).any(-1).sum()) == 2  # only the two valid slots written


def test_qk_norm_rotary_and_cache_norms_each_head_then_rotates_and_caches():
    """Qwen3's q_norm / k_norm (HF: float32 RMS, cast, times the weight) per head, then the rotary and
    the cache write; the composite (each part dispatched: the CPU kernels here) gives the same."""
    head_size, positions, eps = 8, torch.tensor([0, 5, 31]), 1e-6
    angles = torch.outer(torch.arange(32).float(), torch.rand(head_size // 2))
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    qkv = torch.randn(3, 5 * head_size) * 4                  # q: 3 heads, k and v: 1 head each
    q_weight, k_weight = torch.rand(head_size) + 0.5, torch.rand(head_size) + 0.5

    def hf_norm(x, weight):
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)

    eq = hf_norm(qkv[:, :24].reshape(-1, head_size), q_weight).reshape(3, 24)
    ek = hf_norm(qkv[:, 24:32].reshape(-1, head_size), k_weight).reshape(3, 8)
    eq, ek = ref.rotary_embedding(positions, eq, ek, head_size, cache)
    for fn in (ref.qk_norm_rotary_and_cache, ops.qk_norm_rotary_and_cache):
        q, k, v = qkv.clone().split([3 * head_size, head_size, head_size], dim=-1)
        k_cache, v_cache = torch.zeros(2, 4, 1, head_size), torch.zeros(2, 4, 1, head_size)
        q, k = fn(positions, q, k, v, k_cache, v_cache, torch.tensor([6, -1, 0]), head_size, cache, True,
                  q_weight, k_weight, eps)
        torch.testing.assert_close(q, eq)
        torch.testing.assert_close(k, ek)
        torch.testing.assert_close(k_cache[1, 2, 0], ek[0])
        torch.testing.assert_close(v_cache[0, 0, 0], v[2])
        assert int((k_cache != 0).any(-1).sum()) == 2        # slot -1 not written


def test_rotary_and_cache_is_rotary_then_cache_write():
    head_size, positions = 8, torch.tensor([0, 5, 31])
    angles = torch.outer(torch.arange(32).float(), torch.rand(head_size // 2))
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    qkv = torch.randn(3, 4 * head_size)                      # q: 2 heads, k and v: 1 head each
    q, k, v = qkv.clone().split([2 * head_size, head_size, head_size], dim=-1)  # strided views
    k_cache, v_cache = torch.zeros(2, 4, 1, head_size), torch.zeros(2, 4, 1, head_size)
    ref.rotary_and_cache(positions, q, k, v, k_cache, v_cache, torch.tensor([6, -1, 0]), head_size, cache)
    eq, ek = ref.rotary_embedding(positions, qkv[:, :16].clone(), qkv[:, 16:24].clone(), head_size, cache)
    torch.testing.assert_close(q, eq)
    torch.testing.assert_close(k, ek)
    torch.testing.assert_close(k_cache[1, 2, 0], ek[0])
    torch.testing.assert_close(v_cache[0, 0, 0], v[2])
    assert int((k_cache != 0).any(-1).sum()) == 2           # slot -1 not written
