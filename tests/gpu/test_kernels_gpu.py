"""Triton paged attention, Triton ops and compiled qinfer._C ops vs the torch reference, on a GPU.

Run on the device machine: `python -m pytest -m gpu tests/gpu/test_kernels_gpu.py`
(build qinfer/_C.so first with `python -m qinfer.ops.build` for the compiled-op tests).
"""
from __future__ import annotations

import pytest
import torch

from qinfer.testing.paged_batch import attention_ref, make_batch, rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

DTYPES = [torch.bfloat16, torch.float16]
TOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def pa():
    from qinfer.kernels import paged_attention
    return paged_attention


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head", [64, 128])
def test_decode_ragged_long(pa, dtype, block_size, head):
    # GQA 32/8, contexts from 1 to past 8k: exercises both the single-pass and split-K paths.
    ctx = [0, 1, 15, 16, 17, 300, 1023, 4097, 8300]
    q, kc, vc, bt, seq, qsl = make_batch([1] * len(ctx), ctx, 32, 8, head, block_size, dtype,
                                         seed=block_size + head, device="cuda")
    ref = attention_ref(q, kc, vc, bt, seq, qsl, head ** -0.5)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    pa.paged_decode(q, kc, vc, bt, seq, int(seq.max()), head ** -0.5, out=out)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("num_reqs", [1, 256])
def test_decode_split_counts(pa, num_reqs):
    # One request must fan out over the context; a full batch needs no split.
    cfg = pa.DECODE_CFG
    parts = pa.decode_partitions(num_reqs, 8, 16384, cfg["min_partition"], cfg["target_programs"], cfg["max_parts"])
    assert (parts > 1) == (num_reqs == 1)
    q, kc, vc, bt, seq, qsl = make_batch([1] * num_reqs, [1000] * num_reqs, 32, 8, 128, 16,
                                         torch.bfloat16, device="cuda")
    ref = attention_ref(q, kc, vc, bt, seq, qsl, 0.088)
    assert rel_err(pa.paged_decode(q, kc, vc, bt, seq, int(seq.max()), 0.088), ref) < 1e-2


def test_decode_merge_under_graph_replay(pa):
    # The in-kernel merge (atomic counters reset by the last partition) across CUDA-graph
    # replays with a static bound of 16k and contexts that change between replays.
    q, kc, vc, bt, seq, qsl = make_batch([1] * 4, [16000, 700, 3, 9000], 32, 8, 128, 16,
                                         torch.bfloat16, seed=11, device="cuda")
    out = torch.empty_like(q)
    pa.paged_decode(q, kc, vc, bt, seq, 16384, 0.088, out=out)    # warm up (compile)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pa.paged_decode(q, kc, vc, bt, seq, 16384, 0.088, out=out)
    for lens in ([16001, 701, 4, 9001], [1, 16001, 300, 40], [5000, 1, 1, 16001]):
        seq.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        assert rel_err(out, attention_ref(q, kc, vc, bt, seq, qsl, 0.088)) < 1e-2
    torch.cuda.synchronize()
    assert not pa._merge_counters(4 * 8, q.device).any()


def test_decode_float32(pa):
    q, kc, vc, bt, seq, qsl = make_batch([1] * 3, [7, 900, 2000], 8, 2, 64, 16, torch.float32,
                                         device="cuda")
    ref = attention_ref(q, kc, vc, bt, seq, qsl, 0.125)
    assert rel_err(pa.paged_decode(q, kc, vc, bt, seq, int(seq.max()), 0.125), ref) < 1e-5


@pytest.mark.parametrize("dtype", DTYPES + [torch.float32])
@pytest.mark.parametrize("block_size", [16, 32])
@pytest.mark.parametrize("head", [64, 128])
def test_prefill_chunked_ragged(pa, dtype, block_size, head):
    # Fresh prompts, chunks on top of a cache (to 8k), and decode rows in one batch.
    query_lens = [1, 17, 512, 100, 1, 777]
    ctx = [40, 0, 0, 8200, 3000, 1500]
    q, kc, vc, bt, seq, qsl = make_batch(query_lens, ctx, 16, 4, head, block_size, dtype,
                                         seed=head, device="cuda")
    ref = attention_ref(q, kc, vc, bt, seq, qsl, head ** -0.5)
    out = torch.full_like(q, float("nan"))
    pa.paged_prefill(q, kc, vc, bt, seq, qsl, int(seq.max()), head ** -0.5, out=out)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("cfg", [None, {"block_m": 64, "block_n": 64, "num_warps": 4, "num_stages": 2},
                                 {"block_m": 128, "block_n": 64, "num_warps": 8, "num_stages": 2}])
def test_prefill_long_fresh_and_on_prefix(pa, cfg):
    # What prefill benches run: 2k-token fresh prompts, 512-token chunks on a 1.5k prefix.
    for query_lens, ctx in (([2048, 2048], [0, 0]), ([512, 512, 1], [1536, 1536, 2000])):
        q, kc, vc, bt, seq, qsl = make_batch(query_lens, ctx, 32, 8, 128, 16, torch.bfloat16,
                                             seed=len(ctx), device="cuda")
        out = torch.full_like(q, float("nan"))
        pa.paged_prefill(q, kc, vc, bt, seq, qsl, int(seq.max()), 0.088, out=out, cfg=cfg)
        assert rel_err(out, attention_ref(q, kc, vc, bt, seq, qsl, 0.088)) < 1e-2


def _fused_new_kv(q, kc, vc, bt, seq, qsl):
    """q and each token's new K / V rows (read back from the cache at its slot) as views of one
    fused [T, (Hq + 2 Hk) * D] buffer, strided like the engine's qkv projection output."""
    num_tokens, num_heads, head = q.shape
    num_kv, block = kc.shape[2], kc.shape[1]
    qkv = torch.empty(num_tokens, (num_heads + 2 * num_kv) * head, device="cuda", dtype=q.dtype)
    fused_q = qkv[:, :num_heads * head].view(num_tokens, num_heads, head)
    key = qkv[:, num_heads * head:(num_heads + num_kv) * head].view(num_tokens, num_kv, head)
    value = qkv[:, (num_heads + num_kv) * head:].view(num_tokens, num_kv, head)
    fused_q.copy_(q)
    for r in range(len(seq)):
        start, end = int(qsl[r]), int(qsl[r + 1])
        pos = torch.arange(int(seq[r]) - (end - start), int(seq[r]), device="cuda")
        blocks = bt[r, pos // block].long()
        key[start:end] = kc[blocks, pos % block]
        value[start:end] = vc[blocks, pos % block]
    return fused_q, key, value


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head", [64, 128])
@pytest.mark.parametrize("cfg", [None, {"block_m": 128, "block_n": 128, "num_warps": 8, "num_stages": 3}])
def test_prefill_fresh_from_new_rows(pa, dtype, head, cfg):
    from qinfer.kernels import fresh_prefill as fresh
    # Prefill requests with no cached tokens read their keys from the step's own rows (TMA);
    # lengths off the tiles, a one-row-past-a-tile request, decode rows on long contexts.
    query_lens = [1, 17, 2048, 129, 1, 300, 2, 1]
    ctx = [40, 0, 0, 0, 3000, 0, 0, 8200]
    q, kc, vc, bt, seq, qsl = make_batch(query_lens, ctx, 32, 8, head, 16, dtype, seed=head, device="cuda")
    fused_q, key, value = _fused_new_kv(q, kc, vc, bt, seq, qsl)
    assert fresh.fresh_prefill_applies(fused_q, key, value)
    ref = attention_ref(q, kc, vc, bt, seq, qsl, head ** -0.5)
    out = torch.full_like(q, float("nan"))
    pa.paged_prefill(fused_q, kc, vc, bt, seq, qsl, int(seq.max()), head ** -0.5, out=out, num_prefills=5,
                     new_kv=(key, value))
    assert rel_err(out, ref) < TOL[dtype]
    if cfg is not None:   # fresh_prefill alone, another tile shape: its rows only
        alone = torch.zeros_like(q)
        fresh.fresh_prefill(fused_q, key, value, qsl, head ** -0.5, alone, cfg=cfg)
        rows = torch.repeat_interleave(torch.tensor(query_lens, device="cuda") > 1,
                                       torch.tensor(query_lens, device="cuda"))
        assert rel_err(alone[rows], ref[rows]) < TOL[dtype]


def test_block_table_width_compiles_no_new_variant(pa):
    # An eager step's block table is as wide as its longest context: another width must run the
    # kernels compiled for the first (Triton specializes integers on 1 and on multiples of 16; a
    # compile mid-traffic stalls every job of a worker), with the same outputs.
    q, kc, vc, bt, seq, qsl = make_batch([1, 40, 1], [30, 0, 200], 32, 8, 128, 16, torch.bfloat16,
                                         seed=5, device="cuda")

    def widened(width: int) -> torch.Tensor:    # the same table, its rows `width` entries apart
        table = torch.zeros(bt.shape[0], width, dtype=bt.dtype, device="cuda")
        table[:, :bt.shape[1]] = bt
        return table

    def compiled() -> int:
        device = torch.cuda.current_device()
        return sum(len(k.device_caches[device][0]) for k in (pa._decode_kernel, pa._prefill_kernel))

    first = pa.paged_prefill(q, kc, vc, widened(bt.shape[1]), seq, qsl, int(seq.max()), 0.088, num_prefills=1)
    variants = compiled()
    for width in (16, 77, 256):
        out = pa.paged_prefill(q, kc, vc, widened(width), seq, qsl, int(seq.max()), 0.088, num_prefills=1)
        assert torch.equal(out, first)
    assert compiled() == variants


def test_prefill_mixed_batches_under_graph_replay(pa):
    # One graph captured for 96 token rows, 8 request rows, at most 3 prefill requests and a
    # static max_seq_len; replayed with batches of other mixes, padded as cuda_graphs pads them.
    num_tokens, num_reqs, max_seq_len = 96, 8, 4096
    q = torch.randn(num_tokens, 32, 128, device="cuda", dtype=torch.bfloat16)
    out = torch.empty_like(q)
    qsl = torch.zeros(num_reqs + 1, dtype=torch.int32, device="cuda")
    seq = torch.ones(num_reqs, dtype=torch.int32, device="cuda")
    _, kc, vc, bt, _, _ = make_batch([1] * num_reqs, [max_seq_len - 1] * num_reqs, 32, 8, 128, 16,
                                     torch.bfloat16, seed=3, device="cuda")
    run = lambda: pa.paged_prefill(q, kc, vc, bt, seq, qsl, max_seq_len, 0.088, out=out,  # noqa: E731
                                   num_prefills=3)
    run()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    for query_lens, ctx in (([1, 60, 1, 1, 20], [100, 0, 3000, 7, 500]),
                            ([33, 30, 30], [4000, 0, 64]),
                            ([1] * 8, [5, 4000, 1, 9, 300, 2, 2, 17]),
                            ([95], [1])):
        n, t = len(query_lens), sum(query_lens)
        ends = torch.tensor(query_lens, device="cuda").cumsum(0)
        qsl[1:n + 1] = ends.to(torch.int32)
        qsl[n + 1:] = t
        seq[:n] = torch.tensor([c + ql for c, ql in zip(ctx, query_lens)], dtype=torch.int32)
        out.fill_(float("nan"))
        graph.replay()
        ref = attention_ref(q[:t], kc, vc, bt[:n], seq[:n], qsl[:n + 1], 0.088)
        assert rel_err(out[:t], ref) < 1e-2


def test_backend_matches_reference_backend():
    from qinfer.layers.attention.backend import AttentionMetadata
    from qinfer.layers.attention.reference import ReferenceAttentionBackend
    from qinfer.layers.attention.triton_backend import TritonAttentionBackend

    for query_lens, ctx in (([1] * 5, [3, 100, 0, 2000, 64]), ([9, 1, 300], [0, 50, 1000]),
                            ([9, 1, 300], [0, 50, 0])):
        q, kc, vc, bt, seq, qsl = make_batch(query_lens, ctx, 32, 8, 128, 16, torch.bfloat16,
                                             seed=7, device="cuda")
        key, value = torch.randn_like(q[:, :8]), torch.randn_like(q[:, :8])
        slots = torch.cat([bt[r, torch.arange(c, c + n, device="cuda") // 16].long() * 16
                           + torch.arange(c, c + n, device="cuda") % 16
                           for r, (c, n) in enumerate(zip(ctx, query_lens))])
        is_fresh = all(c == 0 for c, n in zip(ctx, query_lens) if n > 1)   # the last batch: fresh_prefill
        meta = AttentionMetadata(slots, qsl, seq, bt, max(query_lens), int(seq.max()),
                                 num_prefills=sum(n > 1 for n in query_lens), prefills_are_fresh=is_fresh)
        kc2, vc2 = kc.clone(), vc.clone()
        ref = ReferenceAttentionBackend().forward(q, key, value, kc, vc, meta, 0.088)
        out = TritonAttentionBackend().forward(q, key, value, kc2, vc2, meta, 0.088)
        assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
        assert rel_err(out, ref) < 1e-2


# ---- hot ops: every fast implementation against qinfer.ops.reference ----------------------

IMPLS = ["triton", "cuda"]


def _get(impl: str) -> dict:
    """op name -> the `impl` implementation registered for CUDA tensors."""
    from qinfer.ops import triton_ops  # noqa: F401  (registers the Triton twins)
    from qinfer.ops import compiled, registry

    if impl == "cuda" and not compiled.load():
        pytest.skip("qinfer._C not built (python -m qinfer.ops.build)")
    return {op: fn for op, entries in registry._IMPLS.items()
            for _, name, devices, fn in entries if name == impl and "cuda" in devices}


# Row widths and layouts: the CUDA kernels' 16-byte path (4,096; 8,192 = two Packs a thread; a
# padded row stride) and their element-wise fallback (a width off the 16 bytes; rows starting off
# them, from a column slice).
NORM_LAYOUTS = [(4096, 0, 0), (8192, 0, 0), (2048, 8, 0), (4100, 0, 0), (4096, 0, 1)]


def _rows(num_rows: int, width: int, pad: int, offset: int, dtype) -> torch.Tensor:
    """[num_rows, width] whose rows lie `pad` elements apart beyond their width, from column `offset`."""
    return torch.randn(num_rows, offset + width + pad, device="cuda", dtype=dtype)[:, offset:offset + width]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden,pad,offset", NORM_LAYOUTS)
def test_norm_ops(impl, dtype, hidden, pad, offset):
    from qinfer.ops import reference
    fns = _get(impl)
    x, res = _rows(37, hidden, pad, offset, dtype), _rows(37, hidden, pad, offset, dtype)
    w = torch.randn(hidden, device="cuda", dtype=dtype)
    assert rel_err(fns["rms_norm"](x, w, 1e-5), reference.rms_norm(x, w, 1e-5)) < 1e-2
    ref_out, ref_sum = reference.fused_add_rms_norm(x, res, w, 1e-5)
    x_copy, res_copy = _rows(37, hidden, pad, offset, dtype), _rows(37, hidden, pad, offset, dtype)
    out, summed = fns["fused_add_rms_norm"](x_copy.copy_(x), res_copy.copy_(res), w, 1e-5)   # in place: same layout
    assert torch.equal(summed, ref_sum)
    assert rel_err(out, ref_out) < 1e-2


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter,offset", [(14336, 0), (768, 0), (1001, 0), (14336, 1)])
def test_silu_and_mul(impl, dtype, inter, offset):
    from qinfer.ops import reference
    x = _rows(19, 2 * inter, 0, offset, dtype)
    assert rel_err(_get(impl)["silu_and_mul"](x), reference.silu_and_mul(x)) < 1e-2


def _llama3_rotary_inputs(dtype):
    """Llama-3.1-8B rope: (cos_sin_cache [16384, 128], positions [33], fused qkv [33, (32 + 2*8) * 128])."""
    from qinfer.layers.rotary import RotaryEmbedding
    params = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    cache = RotaryEmbedding(128, 16384, params).cos_sin_cache.cuda()
    positions = torch.randint(0, 16384, (33,), device="cuda")
    qkv = torch.randn(33, (32 + 2 * 8) * 128, device="cuda", dtype=dtype)
    return cache, positions, qkv


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("is_neox", [True, False])
def test_rotary(impl, dtype, is_neox):
    from qinfer.ops import reference
    cache, positions, qkv = _llama3_rotary_inputs(dtype)
    q, k = qkv[:, :4096], qkv[:, 4096:5120]          # strided views of a fused projection
    v_before = qkv[:, 5120:].clone()
    rq, rk = reference.rotary_embedding(positions, q.clone(), k.clone(), 128, cache, is_neox)
    tq, tk = _get(impl)["rotary_embedding"](positions, q, k, 128, cache, is_neox)
    assert rel_err(tq, rq) < 1e-2 and rel_err(tk, rk) < 1e-2
    assert torch.equal(qkv[:, 5120:], v_before)       # V untouched


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
def test_reshape_and_cache(impl, dtype, block_size):
    from qinfer.ops import reference
    qkv = torch.randn(50, 48, 128, device="cuda", dtype=dtype)
    key, value = qkv[:, 32:40], qkv[:, 40:]            # [T, 8, 128] views of a fused projection
    slots = torch.randperm(64 * block_size, device="cuda")[:50]
    slots[3] = -1
    caches = [torch.randn(64, block_size, 8, 128, device="cuda", dtype=dtype) for _ in range(2)]
    mine = [c.clone() for c in caches]
    reference.reshape_and_cache(key, value, *caches, slots)
    _get(impl)["reshape_and_cache"](key, value, *mine, slots)
    assert torch.equal(caches[0], mine[0]) and torch.equal(caches[1], mine[1])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("block_size", [16, 32])
def test_rotary_and_cache(impl, dtype, block_size):
    # Llama-3.1-8B heads, strided q/k/v views of a fused projection, one slot -1.
    from qinfer.ops import reference
    cache, positions, qkv = _llama3_rotary_inputs(dtype)
    slots = torch.randperm(64 * block_size, device="cuda")[:33]
    slots[5] = -1
    caches = [torch.randn(64, block_size, 8, 128, device="cuda", dtype=dtype) for _ in range(2)]
    results = []
    for fn in (reference.rotary_and_cache, _get(impl)["rotary_and_cache"]):
        x, kc, vc = qkv.clone(), caches[0].clone(), caches[1].clone()
        q, k, v = x.split([4096, 1024, 1024], dim=-1)
        fn(positions, q, k, v, kc, vc, slots, 128, cache, True)
        results.append((x, kc, vc))
    (rx, rkc, rvc), (x, kc, vc) = results
    assert rel_err(x, rx) < 1e-2 and rel_err(kc, rkc) < 1e-2
    assert torch.equal(vc, rvc) and torch.equal(x[:, 5120:], qkv[:, 5120:])   # V copied, untouched


@pytest.mark.parametrize("impl", ["composite", "cuda"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_size, is_neox", [(128, True), (64, True), (256, True), (128, False), (80, True)])
def test_qk_norm_rotary_and_cache(impl, dtype, head_size, is_neox):
    """Qwen3's per-head norms with the rotary and the cache write, against the torch reference (the
    norms, then rotary_and_cache), on strided q/k/v views of a fused projection with a slot -1;
    head_size 80 has no compiled kernel (the cuda entry hands it to the composite)."""
    from qinfer.layers.rotary import RotaryEmbedding
    from qinfer.ops import reference
    num_q, num_kv, tokens = 16, 4, 33
    cache = RotaryEmbedding(head_size, 4096, {"rope_type": "default", "rope_theta": 1e6}).cos_sin_cache.cuda()
    positions = torch.randint(0, 4096, (tokens,), device="cuda")
    qkv = torch.randn(tokens, (num_q + 2 * num_kv) * head_size, device="cuda", dtype=dtype) * 3
    weights = [torch.rand(head_size, device="cuda", dtype=dtype) + 0.5 for _ in range(2)]
    slots = torch.randperm(64 * 16, device="cuda")[:tokens]
    slots[5] = -1
    caches = [torch.randn(64, 16, num_kv, head_size, device="cuda", dtype=dtype) for _ in range(2)]
    results = []
    for fn in (reference.qk_norm_rotary_and_cache, _get(impl)["qk_norm_rotary_and_cache"]):
        x, kc, vc = qkv.clone(), caches[0].clone(), caches[1].clone()
        q, k, v = x.split([num_q * head_size, num_kv * head_size, num_kv * head_size], dim=-1)
        q, k = fn(positions, q, k, v, kc, vc, slots, head_size, cache, is_neox, *weights, 1e-6)
        results.append((q, k, kc, vc))
    (rq, rk, rkc, rvc), (q, k, kc, vc) = results
    assert rel_err(q, rq) < TOL[dtype] and rel_err(k, rk) < TOL[dtype] and rel_err(kc, rkc) < TOL[dtype]
    assert torch.equal(vc, rvc)
    assert torch.equal(kc.flatten(0, 1)[slots[6]], k[6].view(num_kv, head_size))   # the cache holds the key it returns


# ---- the batch-1 GEMV (csrc/gemv.cu) against a float32 product ---------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, k", [(1001, 1032), (4096, 4096)])
def test_gemv(dtype, n, k):
    # K = 1032: the unrolled loop and its remainder both run.
    _get("cuda")
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    w, bias = torch.randn(n, k, device="cuda", dtype=dtype), torch.randn(n, device="cuda", dtype=dtype)
    out = torch.ops.qinfer.gemv(x, w, bias)
    assert out.dtype == dtype and out.shape == (1, n)
    assert rel_err(out, (x.float() @ w.float().T + bias.float()).to(dtype)) < 1e-2
    assert rel_err(torch.ops.qinfer.gemv(x, w, None), (x.float() @ w.float().T).to(dtype)) < 1e-2


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter, k", [(1001, 1032), (14336, 4096)])
@pytest.mark.parametrize("bias", [False, True])
def test_gemv_silu_and_mul_gives_the_bits_of_gemv_then_silu(dtype, inter, k, bias):
    # The gated GEMV rounds gate and up to 16 bits before the silu, as the two launches do:
    # the fused and unfused batch-1 MLPs must decode the same tokens.
    _get("cuda")
    x = torch.randn(1, k, device="cuda", dtype=dtype)
    w = torch.randn(2 * inter, k, device="cuda", dtype=dtype) / k ** 0.5
    b = torch.randn(2 * inter, device="cuda", dtype=dtype) if bias else None
    fused = torch.ops.qinfer.gemv_silu_and_mul(x, w, b)
    assert fused.shape == (1, inter) and fused.dtype == dtype
    assert torch.equal(fused, torch.ops.qinfer.silu_and_mul(torch.ops.qinfer.gemv(x, w, b)))
    gate, up = (x.float() @ w.float().T + (b.float() if bias else 0)).chunk(2, dim=-1)
    assert rel_err(fused, (torch.nn.functional.silu(gate) * up).to(dtype)) < 2e-2


def test_dependent_launches_in_a_graph_give_the_bits_of_synchronized_ones():
    # The GEMVs, norms and rotary kernels start before the kernel ahead of them ends (programmatic
    # dependent launch, csrc/pdl.cuh) and must not read its output early: a batch-1 layer's chain,
    # replayed from a CUDA graph on new inputs, against the same ops with a device sync between
    # every two (no overlap possible).
    _get("cuda")
    ops, hidden, inter, eps = torch.ops.qinfer, 2048, 5632, 1e-5
    torch.manual_seed(5)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    norm_w, w13 = torch.rand(hidden, **bf) + 0.5, torch.randn(2 * inter, hidden, **bf) / hidden ** 0.5
    w2, wqkv = torch.randn(hidden, inter, **bf) / inter ** 0.5, torch.randn(3072, hidden, **bf) / hidden ** 0.5
    cache = torch.randn(64, 128, **bf)                          # cos | sin of 64 positions, head 128
    positions = torch.tensor([7], device="cuda")

    def layer(x, residual, sync):
        step = torch.cuda.synchronize if sync else (lambda: None)
        h = ops.rms_norm(x, norm_w, eps); step()
        h = ops.gemv_silu_and_mul(h, w13, None); step()
        h = ops.gemv(h, w2, None); step()
        ops.fused_add_rms_norm(h, residual, norm_w, eps); step()   # residual <- h + residual, h <- norm
        qkv = ops.gemv(h, wqkv, None); step()
        q, k = qkv[:, :2048], qkv[:, 2048:2560]
        ops.rotary_embedding(positions, q, k, 128, cache, True); step()
        return ops.gemv(q, w13[:, :2048].contiguous(), None), residual

    static_x, static_res = torch.randn(1, hidden, **bf), torch.randn(1, hidden, **bf)
    layer(static_x, static_res.clone(), sync=False)             # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_out, graph_res = layer(static_x, static_res, sync=False)
    for _ in range(20):
        x, res = torch.randn(1, hidden, **bf), torch.randn(1, hidden, **bf)
        static_x.copy_(x), static_res.copy_(res)
        graph.replay()
        expected_out, expected_res = layer(x, res.clone(), sync=True)
        assert torch.equal(graph_out, expected_out) and torch.equal(graph_res, expected_res)


def test_linear_silu_and_mul_dispatch():
    # One row: the fused GEMV; more rows, or a strided row: cuBLAS then silu_and_mul. Each
    # against the torch reference.
    from qinfer.ops import reference
    fns = _get("cuda")
    w = torch.randn(1024, 256, device="cuda", dtype=torch.bfloat16) / 16
    for x in (torch.randn(1, 256, device="cuda", dtype=torch.bfloat16),
              torch.randn(3, 256, device="cuda", dtype=torch.bfloat16),
              torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)[:, ::2]):
        out = fns["linear_silu_and_mul"](x, w)
        assert out.shape == (x.shape[0], 512)
        assert rel_err(out, reference.linear_silu_and_mul(x, w)) < 1e-2


def test_linear_dispatch_uses_gemv_for_one_row_only():
    from qinfer.ops import compiled
    fns = _get("cuda")
    w = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    row, rows = (torch.randn(m, 256, device="cuda", dtype=torch.bfloat16) for m in (1, 2))
    assert compiled.gemv_applies(row, w) and not compiled.gemv_applies(rows, w)
    assert not compiled.gemv_applies(torch.randn(1, 512, device="cuda", dtype=torch.bfloat16)[:, ::2], w)
    assert not compiled.gemv_applies(row.float(), w.float())
    for x in (row, rows):
        assert rel_err(fns["linear"](x, w), torch.nn.functional.linear(x, w)) < 1e-2
