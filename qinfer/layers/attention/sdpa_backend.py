"""Batched torch attention over the paged KV cache: the CPU default (runs anywhere torch does).

No Python loop over requests: a step's requests form at most two groups, the decodes (one
query each) and the rest (prefill chunks, any mix of lengths), and each group is one
scaled_dot_product_attention call over its contexts gathered by block table, whole blocks at
a time (one row copy per block, not per token), into a padded [R, L] context, with a mask for
keys past a query's position (causal within a chunk, nothing past the request's length). Query heads are stacked per KV head, [R, Hk, Q * group, D],
so GQA never repeats K or V. The gather indices and masks depend on the step only: built by
the first layer that sees the step's metadata, reused by the others.
On the CPU the decodes go instead to the compiled kernel of csrc/cpu (ops/cpu_compiled.py),
which reads the blocks in place, when it could be built; this torch path is its fallback.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from qinfer import ops
from qinfer.ops import cpu_compiled
from qinfer.layers.attention.backend import AttentionBackend, AttentionMetadata


@dataclass
class _Group:
    """Requests attended in one call: R of them, queries padded to Q, contexts to L."""

    token_index: torch.Tensor            # [R * Q] long: flat-batch row of query (r, i) (padding: row 0)
    out_index: Optional[torch.Tensor]    # [N] long: rows of the flat output the real queries fill; None: all, in order
    is_real: Optional[torch.Tensor]      # [R * Q] bool: query (r, i) exists; None: every one does
    blocks: torch.Tensor                 # [R, L / block_size] long: cache blocks of request r's context
    block_table: torch.Tensor            # [R, max blocks] int32 and
    seq_lens: torch.Tensor               # [R] int32: the group's rows of the metadata (compiled decode)
    mask: torch.Tensor                   # [R, 1, Q * group or 1, L] bool: True = attend
    num_queries: int                     # Q
    seen: Optional[torch.Tensor] = None  # [R, L] bool, sliding window: keys some query sees (the others may
                                         # lie in blocks freed behind the window: zeroed, never read as is)
    _additive: Optional[torch.Tensor] = None

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as 0 / -inf in the queries' dtype, made once per step: the CPU SDPA kernel
        runs ~20% faster on it than on the bool mask (SmolLM2 decode shapes, batch 64)."""
        if self._additive is None or self._additive.dtype != dtype:
            self._additive = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self._additive.masked_fill_(~self.mask, float("-inf"))
        return self._additive


def _build_group(meta: AttentionMetadata, rows: torch.Tensor, num_queries: int, group: int,
                 block_size: int, covers_batch: bool, sliding_window: Optional[int] = None) -> _Group:
    """rows: the requests of the group (indices into the batch), each with <= num_queries queries;
    sliding_window W: a query at position p sees keys p - W + 1 .. p."""
    seq_lens = meta.seq_lens[rows].long()
    query_starts = meta.query_start_loc[rows].long()
    query_lens = meta.query_start_loc[rows + 1].long() - query_starts
    num_blocks = -(-int(seq_lens.max()) // block_size)
    blocks = meta.block_tables[rows, :num_blocks].long()                                  # [R, L / bs]
    context = torch.arange(num_blocks * block_size, device=rows.device)                  # L: whole blocks
    query = torch.arange(num_queries, device=rows.device)
    query_positions = (seq_lens - query_lens).unsqueeze(1) + query                       # [R, Q]
    mask = context[None, None, :] <= query_positions[:, :, None]                        # [R, Q, L]
    seen = None
    if sliding_window is not None:
        mask &= context[None, None, :] > query_positions[:, :, None] - sliding_window
        seen = mask.any(dim=1)
    is_real = (query < query_lens.unsqueeze(1)).flatten()
    token_index = (query_starts.unsqueeze(1) + query).flatten().masked_fill(~is_real, 0)
    if num_queries == 1:
        mask = mask.unsqueeze(1)                          # one row, broadcast over the head group
        is_real = None
    else:
        mask = mask.repeat_interleave(group, dim=1).unsqueeze(1)   # row i * group + g is query i's
    out_index = None if covers_batch else token_index if is_real is None else token_index[is_real]
    block_table, group_seq_lens = ((meta.block_tables, meta.seq_lens.contiguous()) if covers_batch
                                   else (meta.block_tables[rows], meta.seq_lens[rows]))
    return _Group(token_index, out_index, is_real, blocks, block_table, group_seq_lens, mask, num_queries, seen)


def build_groups(meta: AttentionMetadata, group: int, block_size: int,
                 sliding_window: Optional[int] = None) -> list[_Group]:
    query_lens = meta.query_start_loc.diff()
    is_decode = query_lens == 1
    num_decodes = int(is_decode.sum())
    groups = []
    if num_decodes:
        rows = torch.nonzero(is_decode).flatten()
        groups.append(_build_group(meta, rows, 1, group, block_size, covers_batch=num_decodes == meta.num_reqs,
                                   sliding_window=sliding_window))
    if num_decodes < meta.num_reqs:
        rows = torch.nonzero(~is_decode).flatten()
        groups.append(_build_group(meta, rows, meta.max_query_len, group, block_size, covers_batch=False,
                                   sliding_window=sliding_window))
    return groups


def attend(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, g: _Group,
           scale: float) -> torch.Tensor:
    """The group's real queries' outputs [N, Hq, D], in token_index order, by torch SDPA."""
    block_size, num_kv_heads, head_size = k_cache.shape[1:]
    num_reqs, num_queries = g.blocks.shape[0], g.num_queries
    context_len = g.blocks.shape[1] * block_size
    group = query.shape[1] // num_kv_heads
    q = query if g.out_index is None else query[g.token_index]   # every query of the batch, in order: no gather
    q = q.view(num_reqs, num_queries, num_kv_heads, group, head_size)
    q = q.transpose(1, 2).reshape(num_reqs, num_kv_heads, num_queries * group, head_size)
    blocks = g.blocks.flatten()
    k = k_cache.index_select(0, blocks).view(num_reqs, context_len, num_kv_heads, head_size).transpose(1, 2)
    v = v_cache.index_select(0, blocks).view(num_reqs, context_len, num_kv_heads, head_size).transpose(1, 2)
    if g.seen is not None:
        unseen = ~g.seen[:, None, :, None]
        k, v = k.masked_fill(unseen, 0.0), v.masked_fill(unseen, 0.0)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=g.additive_mask(q.dtype), scale=scale)  # [R, Hk, Q*G, D]
    out = out.view(num_reqs, num_kv_heads, num_queries, group, head_size).transpose(1, 2)
    out = out.reshape(num_reqs * num_queries, num_kv_heads * group, head_size)
    return out if g.is_real is None else out[g.is_real]


def _attend_group(query, k_cache, v_cache, g: _Group, scale: float, sliding_window: Optional[int]) -> torch.Tensor:
    """The CPU's decodes by the compiled kernel where it could be built, everything else by SDPA
    (the window is in g's mask there)."""
    if g.num_queries == 1 and query.device.type == "cpu" and cpu_compiled.available():
        return _attend_decodes_in_place(query, k_cache, v_cache, g, scale, sliding_window)
    return attend(query, k_cache, v_cache, g, scale)


def _attend_decodes_in_place(query, k_cache, v_cache, g: _Group, scale: float,
                             sliding_window: Optional[int]) -> torch.Tensor:
    """One query per request, by the compiled CPU kernel: the blocks read where they lie (the
    gather and the padded SDPA above took 1.83 ms a layer against its 1.08 in the engine,
    SmolLM2-135M decode at batch 64, bench/NOTES.md)."""
    q = query if g.out_index is None else query[g.token_index]
    out = torch.empty(q.shape, dtype=q.dtype)
    torch.ops.qinfer_cpu.paged_decode_attention(out, q, k_cache, v_cache, g.block_table, g.seq_lens, scale,
                                                sliding_window or 0)
    return out


class SdpaAttentionBackend(AttentionBackend):
    name = "sdpa"
    is_graph_safe = False    # the per-step groups read sizes on the host

    def __init__(self):
        self._step: Optional[tuple[AttentionMetadata, tuple, list[_Group]]] = None

    def forward(self, query, key, value, k_cache, v_cache, meta: AttentionMetadata, scale: float,
                kv_written: bool = False, sliding_window: Optional[int] = None):
        if not kv_written:
            ops.reshape_and_cache(key, value, k_cache, v_cache, meta.slot_mapping)
        groups = self._groups(meta, query.shape[1] // k_cache.shape[2], k_cache.shape[1], sliding_window)
        if len(groups) == 1 and groups[0].out_index is None:   # decode-only step: outputs in order
            return _attend_group(query, k_cache, v_cache, groups[0], scale, sliding_window)
        out = torch.empty_like(query)
        for g in groups:    # two at most: decodes, and the requests with longer queries
            out[g.out_index] = _attend_group(query, k_cache, v_cache, g, scale, sliding_window)
        return out

    def _groups(self, meta: AttentionMetadata, group: int, block_size: int,
                sliding_window: Optional[int]) -> list[_Group]:
        key = (group, sliding_window)
        if self._step is None or self._step[0] is not meta or self._step[1] != key:
            self._step = (meta, key, build_groups(meta, group, block_size, sliding_window))
        return self._step[2]
