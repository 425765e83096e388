"""Sliding-window paged attention (Triton) vs the float64 oracle on a GPU, real head sizes,
with the blocks behind each window poisoned with NaN (the kernels must not read them).

Run on the device machine: `python -m pytest -m gpu tests/gpu/test_sliding_window_gpu.py`.
"""
from __future__ import annotations

import pytest
import torch

from qinfer.testing.paged_batch import attention_ref, make_batch, poison_blocks_behind_window, rel_err

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOL = {torch.bfloat16: 1e-2, torch.float32: 1e-5}


@pytest.fixture(scope="module")
def pa():
    from qinfer.kernels import paged_attention
    return paged_attention


def poisoned_batch(query_lens, ctx, window, dtype, seed):
    batch = make_batch(query_lens, ctx, 32, 8, 128, 16, dtype, seed=seed, device="cuda")
    q, kc, vc, bt, seq, qsl = batch
    ref = attention_ref(q, kc, vc, bt, seq, qsl, 0.088, sliding_window=window)
    poison_blocks_behind_window(kc, vc, bt, seq, qsl, window)
    return batch, ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("window", [1, 100, 2047, 4096])
def test_decode_window(pa, dtype, window):
    # Contexts inside, at and far past the window; single-pass and split-K requests.
    ctx = [0, 5, 99, 100, 2100, 4096, 8300]
    (q, kc, vc, bt, seq, qsl), ref = poisoned_batch([1] * len(ctx), ctx, window, dtype, seed=window)
    out = torch.full_like(q, float("nan"))
    pa.paged_decode(q, kc, vc, bt, seq, 16384, 0.088, out=out, sliding_window=window)
    assert rel_err(out, ref) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("window", [1, 37, 2047])
def test_prefill_window(pa, dtype, window):
    query_lens, ctx = [1, 17, 512, 100, 1, 777], [40, 0, 0, 8200, 3000, 1500]
    (q, kc, vc, bt, seq, qsl), ref = poisoned_batch(query_lens, ctx, window, dtype, seed=window + 1)
    out = torch.full_like(q, float("nan"))
    pa.paged_prefill(q, kc, vc, bt, seq, qsl, max(query_lens), 0.088, out=out, sliding_window=window)
    assert rel_err(out, ref) < TOL[dtype]


def test_windowed_decode_under_graph_replay(pa):
    # The decode graph is captured with max_model_len as the bound; the window sizes its grid.
    q, kc, vc, bt, seq, qsl = make_batch([1] * 4, [9000, 700, 3, 5000], 32, 8, 128, 16, torch.bfloat16,
                                         seed=3, device="cuda")
    clean_kc, clean_vc = kc.clone(), vc.clone()   # the oracle reads every slot: it gets clean caches
    poison_blocks_behind_window(kc, vc, bt, seq, qsl, 512)
    out = torch.empty_like(q)
    pa.paged_decode(q, kc, vc, bt, seq, 16384, 0.088, out=out, sliding_window=512)   # compile
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        pa.paged_decode(q, kc, vc, bt, seq, 16384, 0.088, out=out, sliding_window=512)
    for lens in ([9001, 701, 4, 5001], [9002, 702, 5, 5002]):   # growing: still inside unpoisoned blocks
        seq.copy_(torch.tensor(lens, dtype=torch.int32))
        out.fill_(float("nan"))
        graph.replay()
        ref = attention_ref(q, clean_kc, clean_vc, bt, seq, qsl, 0.088, sliding_window=512)
        assert rel_err(out, ref) < 1e-2
