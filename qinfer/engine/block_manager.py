"""KV block manager: fixed-size blocks, reference counts, a free list, hash-chained prefix cache.

Every block with no reference sits in one ordered free queue, oldest first. A
freed block keeps its hash, so a later request with the same prefix can take it
back (a prefix hit); allocation pops from the front, which evicts the least
recently freed cached block (LRU).

With a sliding window W (every attention layer of the model windowed alike), a
query at position p reads no key before p - W + 1, so a running request's blocks
wholly before its next query's window go back to the free queue
(free_blocks_behind_window); they keep their place in the request's block list, as
stale entries no backend reads.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence

from qinfer.engine.request import Request

_ROOT_HASH = 0x9E3779B97F4A7C15


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """Chain a block's hash on its parent's: same hash means same whole prefix.

    Python hashes ints and tuples of ints deterministically (no PYTHONHASHSEED salt).
    """
    return hash((parent_hash, tuple(token_ids)))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True,
                 sliding_window: Optional[int] = None):
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.sliding_window = sliding_window
        self.num_freed_behind_window = 0          # blocks handed back by free_blocks_behind_window
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[Optional[int]] = [None] * num_blocks
        self.free_queue: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached_blocks: dict[int, int] = {}   # block hash -> block id
        self.num_prefix_queries = 0               # prompt tokens looked up in the prefix cache
        self.num_prefix_hits = 0                  # of those, tokens found

    @property
    def num_free_blocks(self) -> int:
        return len(self.free_queue)

    @property
    def usage(self) -> float:
        return 1.0 - self.num_free_blocks / self.num_blocks

    def num_blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def fits(self, num_tokens: int) -> bool:
        """Whether a sequence of num_tokens fits the whole cache (with every block free)."""
        return self.num_blocks_for(num_tokens) <= self.num_blocks

    @property
    def capacity_tokens(self) -> int:
        return self.num_blocks * self.block_size

    # -- prefix cache ------------------------------------------------------------------
    def get_computed_blocks(self, request: Request) -> list[int]:
        """Blocks holding a cached prefix of the request; at least its last token stays uncomputed."""
        if not self.enable_prefix_caching:
            return []
        max_num_blocks = (request.num_tokens - 1) // self.block_size
        self._extend_block_hashes(request, max_num_blocks)
        hits = []
        for block_hash in request.block_hashes[:max_num_blocks]:
            block_id = self.cached_blocks.get(block_hash)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def record_lookup(self, num_tokens: int, num_hit_blocks: int) -> None:
        """Count an admitted request's lookup (not every retry of a request that did not fit)."""
        if self.enable_prefix_caching:
            self.num_prefix_queries += num_tokens
            self.num_prefix_hits += num_hit_blocks * self.block_size

    def cache_full_blocks(self, request: Request, num_tokens: int) -> None:
        """Register the blocks filled by the first num_tokens tokens so other requests can share them.

        Called when a step is scheduled, not after it ran: every backend writes a layer's
        new K/V for the whole batch before any attention reads, so a request scheduled in
        the same step may already read a block another request fills in that step.
        Only tokens known on the host are hashed: an id still in flight (async scheduling)
        waits for a later step.
        """
        if not self.enable_prefix_caching:
            return
        num_full_blocks = min(num_tokens, request.num_tokens) // self.block_size
        self._extend_block_hashes(request, num_full_blocks)
        # A block freed behind the window before it was hashed (its last id was in flight) may
        # hold another request's tokens by now: it is never registered.
        for i in range(max(request.num_hashed_blocks, request.num_freed_blocks), num_full_blocks):
            block_hash = request.block_hashes[i]
            block_id = request.block_ids[i]
            self.block_hash[block_id] = block_hash
            self.cached_blocks.setdefault(block_hash, block_id)
        request.num_hashed_blocks = max(request.num_hashed_blocks, num_full_blocks)

    def _extend_block_hashes(self, request: Request, num_blocks: int) -> None:
        hashes = request.block_hashes
        size = self.block_size
        tokens = request.all_token_ids
        for i in range(len(hashes), num_blocks):
            parent = hashes[-1] if hashes else _ROOT_HASH
            hashes.append(hash_block(parent, tokens[i * size:(i + 1) * size]))

    # -- allocation ----------------------------------------------------------------------
    def num_new_blocks(self, request: Request, num_new_tokens: int, num_computed_blocks: int = 0) -> int:
        num_held = len(request.block_ids) + num_computed_blocks
        num_computed_tokens = max(request.num_computed_tokens, num_computed_blocks * self.block_size)
        return max(0, self.num_blocks_for(num_computed_tokens + num_new_tokens) - num_held)

    def can_allocate(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> bool:
        return self._fits(self.num_new_blocks(request, num_new_tokens, len(computed_blocks)), computed_blocks)

    def _fits(self, num_needed: int, computed_blocks: Sequence[int]) -> bool:
        # Prefix hits with no reference are in the free queue: taking them shrinks it too.
        num_reclaimed = sum(1 for b in computed_blocks if self.ref_counts[b] == 0) if computed_blocks else 0
        return num_needed + num_reclaimed <= self.num_free_blocks

    def allocate(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> list[int]:
        """Give the request blocks for num_new_tokens more tokens; returns the ids appended to its table.

        Call can_allocate first: this either completes or raises before touching anything.
        """
        num_needed = self.num_new_blocks(request, num_new_tokens, len(computed_blocks))
        if not self._fits(num_needed, computed_blocks):
            raise RuntimeError(f"out of KV blocks for request {request.request_id}")
        for block_id in computed_blocks:
            self._take(block_id)
        new_block_ids = list(computed_blocks) + [self._pop_free_block() for _ in range(num_needed)]
        request.block_ids.extend(new_block_ids)
        request.num_hashed_blocks += len(computed_blocks)
        return new_block_ids

    def free(self, request: Request) -> None:
        """Drop the request's references; tail blocks go first in the queue so they are evicted first."""
        for block_id in reversed(request.block_ids[request.num_freed_blocks:]):
            self._release(block_id)
        request.block_ids = []
        request.num_hashed_blocks = 0
        request.num_freed_blocks = 0

    def free_blocks_behind_window(self, request: Request, first_query_position: int) -> None:
        """Release the request's blocks no query from first_query_position on can see (sliding
        window only): every token in them is older than first_query_position - W + 1."""
        num_behind = (first_query_position - self.sliding_window + 1) // self.block_size
        num_behind = min(num_behind, len(request.block_ids))
        for i in range(request.num_freed_blocks, num_behind):
            self._release(request.block_ids[i])
            self.num_freed_behind_window += 1
        request.num_freed_blocks = max(request.num_freed_blocks, num_behind)

    def _release(self, block_id: int) -> None:
        self.ref_counts[block_id] -= 1
        if self.ref_counts[block_id] == 0:
            self.free_queue[block_id] = None

    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:
            del self.free_queue[block_id]
        self.ref_counts[block_id] += 1

    def _pop_free_block(self) -> int:
        block_id, _ = self.free_queue.popitem(last=False)
        self._evict(block_id)
        self.ref_counts[block_id] = 1
        return block_id

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hash[block_id]
        if block_hash is not None:
            if self.cached_blocks.get(block_hash) == block_id:
                del self.cached_blocks[block_hash]
            self.block_hash[block_id] = None
