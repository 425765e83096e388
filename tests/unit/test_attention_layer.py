"""The Attention layer with a rotary embedding (rotary + cache write fused, the backend told
kv_written) gives the caches and outputs of the unfused sequence: rotate, then backend.forward.
The layer's wiring is what is tested, so the fused op is its torch twin (the CPU kernel of
csrc/cpu has its own test against it in test_cpu_kernels.py)."""
from __future__ import annotations

import pytest
import torch

from qinfer import ops
from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.layers.attention.forward_context import set_forward_context
from qinfer.layers.attention.layer import Attention
from qinfer.layers.attention.reference import ReferenceAttentionBackend
from qinfer.layers.rotary import RotaryEmbedding


@pytest.fixture
def torch_rotary_and_cache():
    ops.use_implementation("rotary_and_cache", "torch")
    yield
    ops.use_implementation("rotary_and_cache", None)


def test_fused_rotary_cache_write_matches_the_unfused_path(torch_rotary_and_cache):
    head, num_heads, num_kv, block_size = 16, 4, 2, 4
    rotary = RotaryEmbedding(head, 64, {"rope_type": "default", "rope_theta": 10000.0})
    # Two requests: a prefill of 3 tokens and a decode at position 5 (5 tokens cached).
    positions = torch.tensor([0, 1, 2, 5])
    meta = AttentionMetadata(slot_mapping=torch.tensor([4, 5, 6, 13]),
                             query_start_loc=torch.tensor([0, 3, 4], dtype=torch.int32),
                             seq_lens=torch.tensor([3, 6], dtype=torch.int32),
                             block_tables=torch.tensor([[1, 0], [2, 3]], dtype=torch.int32),
                             max_query_len=3, max_seq_len=6)
    qkv = torch.randn(4, (num_heads + 2 * num_kv) * head)
    caches = [torch.randn(4, block_size, num_kv, head) for _ in range(2)]
    backend = ReferenceAttentionBackend()

    layer = Attention(num_heads, head, 0.25, num_kv, rotary_emb=rotary)
    layer.k_cache, layer.v_cache = caches[0].clone(), caches[1].clone()
    q, k, v = qkv.clone().split([num_heads * head, num_kv * head, num_kv * head], dim=-1)
    with set_forward_context(meta, backend):
        fused = layer(q, k, v, positions)

    q, k, v = qkv.clone().split([num_heads * head, num_kv * head, num_kv * head], dim=-1)
    q, k = rotary(positions, q.contiguous(), k.contiguous())
    kc, vc = caches[0].clone(), caches[1].clone()
    unfused = backend.forward(q.view(4, num_heads, head), k.view(4, num_kv, head), v.reshape(4, num_kv, head),
                              kc, vc, meta, 0.25)
    torch.testing.assert_close(fused, unfused.reshape(4, -1))
    assert torch.equal(layer.k_cache, kc) and torch.equal(layer.v_cache, vc)
