"""Sliding-window attention in the torch backends (reference, batched SDPA) against the float64 oracle, on
ragged batches whose blocks behind the window hold NaN (the backend must not read them).
The Triton kernels are checked the same way in test_triton_attention_interpret.py."""
from __future__ import annotations

import pytest
import torch

from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.layers.attention.reference import ReferenceAttentionBackend
from qinfer.layers.attention.sdpa_backend import SdpaAttentionBackend
from qinfer.testing.paged_batch import attention_ref, make_batch, poison_blocks_behind_window, rel_err


def _meta(q, seq_lens, qsl, bt):
    query_lens = (qsl[1:] - qsl[:-1]).tolist()
    return AttentionMetadata(slot_mapping=torch.full((q.shape[0],), -1, dtype=torch.long),
                             query_start_loc=qsl, seq_lens=seq_lens, block_tables=bt,
                             max_query_len=max(query_lens), max_seq_len=int(seq_lens.max()))


@pytest.mark.parametrize("window", [1, 5, 16, 1000])
@pytest.mark.parametrize("query_lens,ctx", [([1, 1, 1], [40, 3, 17]), ([7, 20, 1, 33], [0, 13, 50, 4])],
                         ids=["decode", "mixed"])
@pytest.mark.parametrize("backend", [ReferenceAttentionBackend, SdpaAttentionBackend], ids=["reference", "sdpa"])
def test_torch_backends_window_matches_oracle(window, query_lens, ctx, backend):
    q, kc, vc, bt, seq_lens, qsl = make_batch(query_lens, ctx, 4, 2, 16, 4, torch.float32, seed=7)
    ref = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25, sliding_window=window)
    poison_blocks_behind_window(kc, vc, bt, seq_lens, qsl, window)
    out = backend().forward(q, None, None, kc, vc, _meta(q, seq_lens, qsl, bt), 0.25,
                            kv_written=True, sliding_window=window)
    assert rel_err(out, ref) < 1e-5


def test_window_changes_the_output():
    """The window is not a no-op: a context longer than it attends differently."""
    q, kc, vc, bt, seq_lens, qsl = make_batch([1, 6], [30, 20], 4, 2, 16, 4, torch.float32, seed=8)
    full = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25)
    windowed = attention_ref(q, kc, vc, bt, seq_lens, qsl, 0.25, sliding_window=8)
    assert rel_err(windowed, full) > 1e-2
