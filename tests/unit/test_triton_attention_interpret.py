"""Triton paged-attention kernels on the CPU under TRITON_INTERPRET=1, tiny shapes
(how: tests/unit/triton_interpret.py)."""
from __future__ import annotations

import pytest
import torch

from qinfer.testing.paged_batch import attention_ref, make_batch, rel_err
from tests.unit.triton_interpret import needs_interpret, not_under_interpreter, rerun_under_interpreter

pytest.importorskip("triton")


@not_under_interpreter
def test_kernels_under_interpreter():
    rerun_under_interpreter(__file__)


@pytest.fixture(scope="module")
def pa():
    from qinfer.kernels import paged_attention
    return paged_attention


TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block_size,head,num_heads,num_kv", [(16, 16, 4, 2), (32, 32, 2, 2)])
@needs_interpret
def test_decode_matches_reference(pa, dtype, block_size, head, num_heads, num_kv):
    ctx = [0, 5, 40, 77]
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * 4, ctx, num_heads, num_kv, head, block_size, dtype)
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.3)
    out = pa.paged_decode(q, kc, vc, bt, seq_lens, int(seq_lens.max()), 0.3)
    assert rel_err(out, ref) < TOL[dtype]


@needs_interpret
def test_decode_split_k_matches_reference(pa):
    # Force many partitions: min_partition 16 and a high program target.
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * 3, [100, 3, 64], 8, 2, 16, 16, torch.float32)
    cfg = {"tile": 16, "min_partition": 16, "target_programs": 64}
    assert pa.decode_partitions(3, 2, int(seq_lens.max()), 16, 64, 32) > 1
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)
    out = pa.paged_decode(q, kc, vc, bt, seq_lens, int(seq_lens.max()), 0.25, cfg=cfg)
    assert rel_err(out, ref) < 1e-5


@needs_interpret
def test_decode_merge_in_last_partition(pa):
    # Ragged contexts under one static bound of 32 partitions, each request sized by its own
    # length: 300 -> 19 partitions of 16, more than one merge chunk holds (head 128, group 4:
    # 16 a chunk) -> several chunks; 40 -> 3; 5 and 0 -> one partition (direct store).
    ctx = [300, 5, 40, 0]
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * 4, ctx, 8, 2, 128, 16, torch.float32, seed=5)
    cfg = {"tile": 16, "min_partition": 16, "target_programs": 512, "max_parts": 32}
    assert pa.decode_partitions(4, 2, 512, 16, 512, 32) == 32
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.1)
    first = pa.paged_decode(q, kc, vc, bt, seq_lens, 512, 0.1, cfg=cfg)
    assert rel_err(first, ref) < 1e-5
    counters = pa._merge_counters(8, q.device)
    assert not counters.any()  # left at zero: the next launch (graph replay) starts clean
    assert torch.equal(pa.paged_decode(q, kc, vc, bt, seq_lens, 512, 0.1, cfg=cfg), first)


@needs_interpret
def test_decode_static_bound_beyond_context(pa):
    # CUDA graphs launch with the capture-time bound (max_model_len), not the batch max.
    q, kc, vc, bt, seq_lens, qsl = make_batch([1] * 2, [20, 9], 4, 4, 16, 16, torch.float32)
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)
    out = pa.paged_decode(q, kc, vc, bt, seq_lens, 512, 0.25,
                          cfg={"tile": 16, "min_partition": 16, "target_programs": 64})
    assert rel_err(out, ref) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@needs_interpret
def test_prefill_ragged_gqa_matches_reference(pa, dtype):
    # Fresh prefills, chunked prefills on a cached context, and decode rows, mixed.
    query_lens, ctx = [7, 20, 1, 33], [0, 13, 50, 4]
    q, kc, vc, bt, seq_lens, qsl = make_batch(query_lens, ctx, 4, 2, 16, 16, dtype, seed=1)
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)
    out = pa.paged_prefill(q, kc, vc, bt, seq_lens, qsl, max(query_lens), 0.25,
                           cfg={"block_m": 16, "block_n": 16})
    assert rel_err(out, ref) < TOL[dtype]


@needs_interpret
def test_prefill_block32_head32(pa):
    query_lens, ctx = [40, 3], [10, 70]
    q, kc, vc, bt, seq_lens, qsl = make_batch(query_lens, ctx, 2, 1, 32, 32, torch.float32, seed=2)
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.2)
    out = pa.paged_prefill(q, kc, vc, bt, seq_lens, qsl, 40, 0.2, cfg={"block_m": 16, "block_n": 32})
    assert rel_err(out, ref) < 1e-5


def _meta(seq_lens, qsl, bt, query_lens, slot_mapping):
    from qinfer.layers.attention.backend import AttentionMetadata
    return AttentionMetadata(slot_mapping=slot_mapping, query_start_loc=qsl, seq_lens=seq_lens,
                             block_tables=bt, max_query_len=max(query_lens),
                             max_seq_len=int(seq_lens.max()))


@needs_interpret
@pytest.mark.parametrize("query_lens", [[1, 1, 1], [5, 1, 12]])
def test_backend_matches_reference_backend(query_lens):
    """Decode-only and mixed batches: write new K/V, attend; caches and outputs agree."""
    from qinfer.layers.attention.reference import ReferenceAttentionBackend
    from qinfer.layers.attention.triton_backend import TritonAttentionBackend
    ctx = [30, 0, 17]
    q, kc, vc, bt, seq_lens, qsl = make_batch(query_lens, ctx, 4, 2, 16, 16, torch.float32, seed=3)
    g = torch.Generator().manual_seed(4)
    key = torch.randn(q.shape[0], 2, 16, generator=g)
    value = torch.randn(q.shape[0], 2, 16, generator=g)
    slots = []
    for r, (c, n) in enumerate(zip(ctx, query_lens)):
        pos = torch.arange(c, c + n)
        slots.append(bt[r, pos // 16].long() * 16 + pos % 16)
    meta = _meta(seq_lens, qsl, bt, query_lens, torch.cat(slots))
    kc2, vc2 = kc.clone(), vc.clone()
    ref = ReferenceAttentionBackend().forward(q, key, value, kc, vc, meta, 0.25)
    out = TritonAttentionBackend().forward(q, key, value, kc2, vc2, meta, 0.25)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    assert rel_err(out, ref) < 1e-5


@pytest.fixture(scope="module")
def ops_triton():
    from qinfer.kernels import ops_triton
    return ops_triton


@needs_interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_ops_match_reference(ops_triton, dtype):
    from qinfer.ops import reference
    x, res, w = torch.randn(5, 48).to(dtype), torch.randn(5, 48).to(dtype), torch.randn(48).to(dtype)
    assert torch.allclose(ops_triton.rms_norm(x, w, 1e-5).float(), reference.rms_norm(x, w, 1e-5).float(),
                          atol=2e-2, rtol=2e-2)
    ref_out, ref_sum = reference.fused_add_rms_norm(x, res, w, 1e-5)
    out, summed = ops_triton.fused_add_rms_norm(x.clone(), res.clone(), w, 1e-5)
    # the interpreter's bf16 rounding may differ by one ulp from torch's
    assert torch.allclose(summed.float(), ref_sum.float(), atol=2e-2, rtol=1e-2)
    assert torch.allclose(out.float(), ref_out.float(), atol=2e-2, rtol=2e-2)


@needs_interpret
def test_silu_and_mul_matches_reference(ops_triton):
    from qinfer.ops import reference
    x = torch.randn(3, 2 * 40)
    assert torch.allclose(ops_triton.silu_and_mul(x), reference.silu_and_mul(x), atol=1e-6)


@needs_interpret
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_matches_reference(ops_triton, is_neox):
    from qinfer.ops import reference
    head, positions = 16, torch.tensor([0, 7, 3, 30])
    angles = torch.outer(torch.arange(32.0), torch.rand(head // 2))
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    q, k = torch.randn(4, 3 * head), torch.randn(4, 1 * head)
    rq, rk = reference.rotary_embedding(positions, q.clone(), k.clone(), head, cache, is_neox)
    tq, tk = ops_triton.rotary_embedding(positions, q.clone(), k.clone(), head, cache, is_neox)
    assert torch.allclose(tq, rq, atol=1e-6) and torch.allclose(tk, rk, atol=1e-6)


@needs_interpret
def test_reshape_and_cache_matches_reference(ops_triton):
    from qinfer.ops import reference
    qkv = torch.randn(5, 3, 2, 16)          # fused projection rows: key/value are strided views
    key, value = qkv[:, 1], qkv[:, 2]
    slots = torch.tensor([3, -1, 17, 0, 31])
    caches = [torch.randn(2, 16, 2, 16) for _ in range(2)]
    mine = [c.clone() for c in caches]
    reference.reshape_and_cache(key, value, *caches, slots)
    ops_triton.reshape_and_cache(key, value, *mine, slots)
    assert torch.equal(caches[0], mine[0]) and torch.equal(caches[1], mine[1])


@needs_interpret
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary_and_cache_matches_reference(ops_triton, dtype, is_neox):
    # Strided q/k/v views of a fused qkv projection, as the attention layer passes them.
    from qinfer.ops import reference
    head, positions = 16, torch.tensor([0, 7, 3, 30, 12])
    angles = torch.outer(torch.arange(32.0), torch.rand(head // 2))
    cache = torch.cat((angles.cos(), angles.sin()), dim=-1)
    qkv = torch.randn(5, (4 + 2 * 2) * head).to(dtype)
    slots = torch.tensor([3, -1, 17, 0, 31])
    caches = [torch.randn(2, 16, 2, head).to(dtype) for _ in range(2)]
    outs = {}
    for name, fn in (("ref", reference.rotary_and_cache), ("triton", ops_triton.rotary_and_cache)):
        x, kc, vc = qkv.clone(), caches[0].clone(), caches[1].clone()
        q, k, v = x.split([4 * head, 2 * head, 2 * head], dim=-1)
        fn(positions, q, k, v, kc, vc, slots, head, cache, is_neox)
        outs[name] = (x, kc, vc)
    for mine, ref in zip(outs["triton"], outs["ref"]):
        torch.testing.assert_close(mine.float(), ref.float(), atol=2e-2 if dtype != torch.float32 else 1e-6,
                                   rtol=1e-2)
