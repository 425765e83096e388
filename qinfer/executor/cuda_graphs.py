"""CUDA graphs for whole steps: decode-only steps by request count, mixed steps by token count.

A step launches hundreds of small kernels; replaying them from a graph removes the CPU
launch cost that otherwise dominates small and medium steps. Two kinds of bucket:
- decode B (decode-only steps of n <= B requests): rows n:B padded with slot -1 (no cache
  write) and seq_len 1; the decode kernel's grid is fixed by B and max_model_len.
- mixed T (steps with a prefill chunk, t <= T tokens): the whole forward, attention
  included, over T token rows and R = min(T, max_num_seqs) request rows. Tokens t:T get
  slot -1 and belong to no request; requests n:R are padding of no query token
  (query_start_loc[n+1:] = t), skipped by both attention kernels; the prefill kernel's
  grid is fixed by T and a bound on the prefill requests (a step with more runs eagerly).
  Token rows never mix in the other layers, so the padding rows' values stay out of the
  real ones.
Every graph is captured once, after the KV cache exists (graphs bake in its addresses),
reading static input buffers, all graphs sharing one memory pool. Their attention metadata
carries max_seq_len = max_model_len, so the decode kernel's launch holds for any later step.
Steps larger than the largest bucket run eagerly: there the GPU's work hides the launches.
"""
from __future__ import annotations

import bisect
import logging
import time
from typing import Callable

import torch

from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata
from qinfer.layers.attention.forward_context import set_forward_context

log = logging.getLogger(__name__)

# Prefill requests (more than one query token) a mixed graph makes room for in its attention grid.
MAX_GRAPH_PREFILLS = 16


def decode_buckets(max_num_seqs: int) -> list[int]:
    """1, 2, 4, 8, then every 16 up to max_num_seqs (which is always a bucket)."""
    sizes = [b for b in (1, 2, 4, 8) if b < max_num_seqs] + list(range(16, max_num_seqs, 16))
    return sorted(set(sizes + [max_num_seqs]))


def mixed_buckets(max_num_tokens: int) -> list[int]:
    """Token counts 8, 16, ..., 256, then steps doubling at every doubling of the count (16 up
    to 512, 32 to 1024, ...; vLLM's spacing): a step pads at most 8 tokens or 1/16 of itself.
    max_num_tokens is always the last bucket."""
    if max_num_tokens <= 0:
        return []
    sizes, size, step = [], 8, 8
    while size < max_num_tokens:
        sizes.append(size)
        if size >= 32 * step:
            step *= 2
        size += step
    return sizes + [max_num_tokens]


class StepCudaGraphs:
    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 attn_backend: AttentionBackend, max_num_seqs: int, max_mixed_tokens: int,
                 max_model_len: int, block_size: int, device: torch.device):
        """forward(input_ids [T], positions [T]) -> hidden [T, H], run under set_forward_context.
        max_mixed_tokens: the largest mixed bucket (0: decode-only graphs)."""
        self.forward, self.attn_backend = forward, attn_backend
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        self.decode_sizes = decode_buckets(max_num_seqs)
        self.mixed_sizes = mixed_buckets(max_mixed_tokens)
        num_tokens = max([self.decode_sizes[-1]] + self.mixed_sizes)
        max_blocks = -(-max_model_len // block_size)
        self.input_ids = torch.zeros(num_tokens, dtype=torch.long, device=device)
        self.positions = torch.zeros(num_tokens, dtype=torch.long, device=device)
        self.slot_mapping = torch.full((num_tokens,), -1, dtype=torch.long, device=device)
        self.seq_lens = torch.ones(max_num_seqs, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(max_num_seqs, max_blocks, dtype=torch.int32, device=device)
        self.query_start_loc = torch.zeros(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.decode_query_start_loc = torch.arange(max_num_seqs + 1, dtype=torch.int32, device=device)
        # ("decode" | "mixed", bucket) -> graph, and its [bucket, H] hidden output (in the pool)
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.capture_s = 0.0
        self.capture_bytes = 0   # device memory the graphs took (their pool and themselves)

    def _num_graph_reqs(self, num_tokens: int) -> int:
        return min(num_tokens, self.max_num_seqs)

    def _meta(self, kind: str, size: int) -> AttentionMetadata:
        if kind == "decode":
            return AttentionMetadata(
                slot_mapping=self.slot_mapping[:size], query_start_loc=self.decode_query_start_loc[:size + 1],
                seq_lens=self.seq_lens[:size], block_tables=self.block_tables[:size],
                max_query_len=1, max_seq_len=self.max_model_len, num_prefills=0)
        num_reqs = self._num_graph_reqs(size)
        return AttentionMetadata(
            slot_mapping=self.slot_mapping[:size], query_start_loc=self.query_start_loc[:num_reqs + 1],
            seq_lens=self.seq_lens[:num_reqs], block_tables=self.block_tables[:num_reqs],
            max_query_len=size, max_seq_len=self.max_model_len,
            num_prefills=min(MAX_GRAPH_PREFILLS, num_reqs))

    def run_eagerly(self, kind: str, size: int) -> torch.Tensor:
        """The forward of bucket (kind, size) over the static buffers, launched eagerly: what its
        graph replays."""
        with set_forward_context(self._meta(kind, size), self.attn_backend):
            return self.forward(self.input_ids[:size], self.positions[:size])

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every bucket, largest first, all sharing one memory pool."""
        torch.cuda.synchronize()
        torch.cuda.empty_cache()   # cached free blocks would blur the memory the graphs take
        free_before, start = torch.cuda.mem_get_info()[0], time.perf_counter()
        pool = torch.cuda.graph_pool_handle()
        keys = [("mixed", t) for t in reversed(self.mixed_sizes)] + [("decode", b) for b in reversed(self.decode_sizes)]
        for key in keys:
            self.run_eagerly(*key)                    # warm up: compiles the Triton kernels of this shape
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self.outputs[key] = self.run_eagerly(*key)
            self.graphs[key] = graph
        torch.cuda.synchronize()
        self.capture_s = time.perf_counter() - start
        self.capture_bytes = free_before - torch.cuda.mem_get_info()[0]
        log.info("captured %d CUDA graphs (%d decode, %d mixed up to %d tokens) in %.1f s, %.0f MiB",
                 len(keys), len(self.decode_sizes), len(self.mixed_sizes),
                 self.mixed_sizes[-1] if self.mixed_sizes else 0, self.capture_s, self.capture_bytes / 2**20)

    def can_run(self, meta: AttentionMetadata, num_tokens: int) -> bool:
        if not self.graphs:
            return False
        if meta.is_decode_only:
            return meta.num_reqs <= self.decode_sizes[-1]
        # (a step's requests, prefills among them, never outnumber its graph's request rows)
        return (bool(self.mixed_sizes) and num_tokens <= self.mixed_sizes[-1]
                and meta.num_prefills is not None and meta.num_prefills <= MAX_GRAPH_PREFILLS)

    def _bucket(self, num_tokens: int) -> int:
        return self.mixed_sizes[bisect.bisect_left(self.mixed_sizes, num_tokens)]

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor,
            meta: AttentionMetadata) -> torch.Tensor:
        """A step of t tokens (input_ids, positions [t]) -> hidden [t, H] (a view of the graph's output)."""
        key = self.stage(input_ids, positions, meta)
        self.graphs[key].replay()
        return self.outputs[key][:input_ids.shape[0]]

    def stage(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> tuple[str, int]:
        """Copy a step into the static buffers, padded to its bucket; returns the bucket's key."""
        t, n = input_ids.shape[0], meta.num_reqs
        if meta.is_decode_only:
            key = ("decode", self.decode_sizes[bisect.bisect_left(self.decode_sizes, n)])
            self.seq_lens[n:key[1]].fill_(1)
        else:
            key = ("mixed", self._bucket(t))
            self.query_start_loc[:n + 1].copy_(meta.query_start_loc)
            self.query_start_loc[n + 1:self._num_graph_reqs(key[1]) + 1].fill_(t)   # padding requests
        # Padding token rows keep earlier ids and positions (any valid value serves) but never
        # write the cache.
        self.input_ids[:t].copy_(input_ids)
        self.positions[:t].copy_(positions)
        self.slot_mapping[:t].copy_(meta.slot_mapping)
        self.slot_mapping[t:key[1]].fill_(-1)
        self.seq_lens[:n].copy_(meta.seq_lens)
        self.block_tables[:n, :meta.block_tables.shape[1]].copy_(meta.block_tables)
        return key
