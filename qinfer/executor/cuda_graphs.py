"""CUDA graphs for decode-only steps, one per batch-size bucket.

A decode step of a few requests launches hundreds of small kernels; replaying
them from a graph removes the CPU launch cost that otherwise dominates at small
batches. Each bucket B is captured once, after the KV cache exists (the graph
bakes in its addresses), reading static input buffers:
    input_ids, positions, slot_mapping [max_bs]; seq_lens [max_bs];
    block_tables [max_bs, max_blocks]; query_start_loc [max_bs + 1] = arange.
A step of n <= B requests copies its inputs into rows :n, pads rows n:B with
slot -1 (no cache write) and seq_len 1, replays bucket B's graph and returns
the first n rows of its output hidden states.

The attention metadata of the capture carries max_seq_len = max_model_len, so the
decode kernel's launch shape (its split over the context) holds for any later step.
"""
from __future__ import annotations

import bisect
from typing import Callable

import torch

from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata
from qinfer.layers.attention.forward_context import set_forward_context


def decode_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_num_seqs (which is always a bucket)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


class DecodeCudaGraphs:
    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 attn_backend: AttentionBackend, max_num_seqs: int, max_model_len: int,
                 block_size: int, device: torch.device):
        """forward(input_ids [T], positions [T]) -> hidden [T, H], run under set_forward_context."""
        self.forward, self.attn_backend = forward, attn_backend
        self.buckets = decode_buckets(max_num_seqs)
        self.max_model_len = max_model_len
        n, max_blocks = self.buckets[-1], -(-max_model_len // block_size)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=device)
        self.positions = torch.zeros(n, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((n,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(n + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}   # bucket -> [B, H] hidden, owned by its graph

    def _meta(self, bs: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:bs], query_start_loc=self.query_start_loc[:bs + 1],
            seq_lens=self.seq_lens[:bs], block_tables=self.block_tables[:bs],
            max_query_len=1, max_seq_len=self.max_model_len)

    def _run(self, bs: int) -> torch.Tensor:
        with set_forward_context(self._meta(bs), self.attn_backend):
            return self.forward(self.input_ids[:bs], self.positions[:bs])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, all sharing one memory pool."""
        pool = torch.cuda.graph_pool_handle()
        for bs in reversed(self.buckets):
            self._run(bs)                      # warm up: compiles the Triton kernels of this shape
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[bs] = self._run(bs)
            self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, meta: AttentionMetadata) -> bool:
        return meta.is_decode_only and meta.num_reqs <= self.buckets[-1] and bool(self.graphs)

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """Decode step of n requests (input_ids, positions [n]) -> hidden [n, H] (a view)."""
        n = meta.num_reqs
        bs = self.buckets[bisect.bisect_left(self.buckets, n)]
        width = meta.block_tables.shape[1]
        self.input_ids[:n].copy_(input_ids)
        self.positions[:n].copy_(positions)
        self.slot_mapping[:n].copy_(meta.slot_mapping)
        self.slot_mapping[n:bs].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.seq_lens[n:bs].fill_(1)
        self.block_tables[:n, :width].copy_(meta.block_tables)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
