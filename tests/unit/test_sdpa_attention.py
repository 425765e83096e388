"""The batched SDPA backend (CPU default) against the per-request reference backend and a float64
oracle: decodes, prefills, chunked prefills (cached context + several queries) mixed in one step,
GQA groups 1 / 3 / 4, and the cache writes."""
import pytest
import torch

from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.layers.attention.reference import ReferenceAttentionBackend
from qinfer.layers.attention.sdpa_backend import SdpaAttentionBackend
from qinfer.testing.paged_batch import attention_ref, make_batch, rel_err

# (query_lens, ctx_lens): per request, new tokens and tokens already cached.
BATCHES = {
    "decode-only": ([1, 1, 1, 1], [0, 7, 33, 16]),
    "prefill-only": ([5, 17, 1], [0, 0, 0]),
    "chunked-prefill": ([8, 8], [16, 3]),
    "mixed": ([1, 9, 1, 4, 1, 16], [40, 0, 5, 11, 0, 32]),
    "one-request": ([6], [10]),
}
HEADS = {"mha": (4, 4), "gqa3": (9, 3), "gqa4": (8, 2)}   # (query heads, kv heads)


def metadata(block_tables, seq_lens, query_start_loc, slot_mapping):
    query_lens = query_start_loc.diff()
    return AttentionMetadata(slot_mapping=slot_mapping, query_start_loc=query_start_loc, seq_lens=seq_lens,
                             block_tables=block_tables, max_query_len=int(query_lens.max()),
                             max_seq_len=int(seq_lens.max()))


def slots_of_new_tokens(block_tables, seq_lens, query_start_loc, block_size):
    slots = []
    for r, (n, q) in enumerate(zip(seq_lens.tolist(), query_start_loc.diff().tolist())):
        positions = torch.arange(n - q, n)
        slots.append(block_tables[r, positions // block_size].long() * block_size + positions % block_size)
    return torch.cat(slots)


@pytest.mark.parametrize("heads", list(HEADS))
@pytest.mark.parametrize("batch", list(BATCHES))
def test_sdpa_equals_reference_and_oracle(batch, heads):
    query_lens, ctx_lens = BATCHES[batch]
    num_heads, num_kv = HEADS[heads]
    block_size = 4
    q, k_cache, v_cache, block_tables, seq_lens, qsl = make_batch(query_lens, ctx_lens, num_heads, num_kv, 16,
                                                                  block_size, torch.float32, seed=len(batch))
    meta = metadata(block_tables, seq_lens, qsl, slots_of_new_tokens(block_tables, seq_lens, qsl, block_size))
    args = (q, None, None, k_cache, v_cache, meta, 0.25)
    got = SdpaAttentionBackend().forward(*args, kv_written=True)
    expected = ReferenceAttentionBackend().forward(*args, kv_written=True)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert rel_err(got, attention_ref(q, k_cache, v_cache, block_tables, seq_lens, qsl, 0.25)) < 1e-5


def test_sdpa_writes_new_keys_and_values_like_the_reference():
    query_lens, ctx_lens = BATCHES["mixed"]
    q, k_cache, v_cache, block_tables, seq_lens, qsl = make_batch(query_lens, ctx_lens, 8, 2, 16, 4, torch.float32)
    meta = metadata(block_tables, seq_lens, qsl, slots_of_new_tokens(block_tables, seq_lens, qsl, 4))
    key, value = torch.randn(len(q), 2, 16), torch.randn(len(q), 2, 16)
    outputs, caches = [], []
    for backend in (SdpaAttentionBackend(), ReferenceAttentionBackend()):
        kc, vc = k_cache.clone(), v_cache.clone()
        outputs.append(backend.forward(q, key, value, kc, vc, meta, 0.25))
        caches.append((kc, vc))
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-5, rtol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(*caches))
    assert not torch.equal(caches[0][0], k_cache)        # the new keys went in


def test_groups_are_built_once_per_step_and_rebuilt_for_the_next():
    backend = SdpaAttentionBackend()
    query_lens, ctx_lens = BATCHES["mixed"]
    q, k_cache, v_cache, block_tables, seq_lens, qsl = make_batch(query_lens, ctx_lens, 8, 2, 16, 4, torch.float32)
    meta = metadata(block_tables, seq_lens, qsl, slots_of_new_tokens(block_tables, seq_lens, qsl, 4))
    backend.forward(q, None, None, k_cache, v_cache, meta, 0.25, kv_written=True)
    groups = backend._step[2]
    assert len(groups) == 2 and [g.num_queries for g in groups] == [1, 16]
    backend.forward(q, None, None, k_cache, v_cache, meta, 0.25, kv_written=True)   # the next layer
    assert backend._step[2] is groups
    other = metadata(block_tables, seq_lens, qsl, meta.slot_mapping)              # the next step
    backend.forward(q, None, None, k_cache, v_cache, other, 0.25, kv_written=True)
    assert backend._step[2] is not groups
