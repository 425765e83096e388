"""BlockManager: reference counts, free list, prefix cache with LRU eviction, all-or-nothing allocation."""
import pytest

from qinfer.engine.block_manager import BlockManager
from tests.factories import make_request


def computed(manager, request, num_tokens):
    """Allocate and mark num_tokens computed (what a step does), registering full blocks."""
    manager.allocate(request, num_tokens - request.num_computed_tokens)
    request.num_computed_tokens = num_tokens
    manager.cache_full_blocks(request, num_tokens)


def test_allocate_rounds_up_to_blocks_and_free_returns_them():
    manager = BlockManager(num_blocks=8, block_size=4)
    request = make_request(prompt=range(9))
    assert manager.allocate(request, 9) == [0, 1, 2]
    assert manager.num_free_blocks == 5
    manager.free(request)
    assert manager.num_free_blocks == 8 and request.block_ids == []


def test_can_allocate_is_false_and_allocate_touches_nothing_when_short():
    manager = BlockManager(num_blocks=2, block_size=4)
    request = make_request(prompt=range(12))
    assert not manager.can_allocate(request, 12)
    with pytest.raises(RuntimeError):
        manager.allocate(request, 12)
    assert manager.num_free_blocks == 2 and request.block_ids == []


def test_growing_request_gets_a_block_only_when_one_fills():
    manager = BlockManager(num_blocks=4, block_size=4)
    request = make_request(prompt=range(3))
    computed(manager, request, 3)
    assert manager.allocate(request, 1) == []         # 4th token fits block 0
    request.num_computed_tokens = 4
    assert manager.allocate(request, 1) == [1]


def test_prefix_hits_share_blocks_and_never_cover_the_last_token():
    manager = BlockManager(num_blocks=8, block_size=4)
    first = make_request("a", prompt=range(8))
    computed(manager, first, 8)
    same = make_request("b", prompt=range(8))
    assert manager.get_computed_blocks(same) == first.block_ids[:1]   # last token left to compute
    longer = make_request("c", prompt=list(range(8)) + [99])
    hits = manager.get_computed_blocks(longer)
    assert hits == first.block_ids
    manager.allocate(longer, 1, hits)
    manager.record_lookup(longer.num_tokens, len(hits))
    assert manager.ref_counts[hits[0]] == 2
    assert manager.num_prefix_hits == 8 and manager.num_prefix_queries == 9


def test_hash_chains_on_the_parent_so_same_block_after_other_prefix_misses():
    manager = BlockManager(num_blocks=8, block_size=2)
    computed(manager, make_request("a", prompt=[1, 2, 3, 4, 5]), 4)
    assert manager.get_computed_blocks(make_request("b", prompt=[9, 9, 3, 4, 5])) == []


def test_freed_cached_blocks_are_reused_then_evicted_least_recent_first():
    manager = BlockManager(num_blocks=4, block_size=2)
    old = make_request("old", prompt=[1, 2, 3, 4, 0])
    computed(manager, old, 4)
    old_block_ids = list(old.block_ids)
    manager.free(old)
    assert manager.num_free_blocks == 4                 # cached but unreferenced: still free
    hits = manager.get_computed_blocks(make_request("again", prompt=[1, 2, 3, 4, 0]))
    assert len(hits) == 2
    filler = make_request("filler", prompt=range(10, 16))
    manager.allocate(filler, 6)                         # 3 of 4 blocks: evicts old's tail block only
    assert manager.get_computed_blocks(make_request("late", prompt=[1, 2, 3, 4, 0])) == old_block_ids[:1]


def test_can_allocate_counts_unreferenced_hits_as_taken_from_the_free_list():
    manager = BlockManager(num_blocks=3, block_size=2)
    old = make_request("old", prompt=[1, 2, 3, 4, 5])
    computed(manager, old, 4)
    manager.free(old)
    request = make_request("new", prompt=[1, 2, 3, 4, 5, 6, 7])
    hits = manager.get_computed_blocks(request)
    assert len(hits) == 2
    assert manager.can_allocate(request, 2, hits)       # 2 hits + 1 new block = 3 blocks
    assert not manager.can_allocate(request, 3, hits)


def test_prefix_caching_off_gives_no_hits():
    manager = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    computed(manager, make_request("a", prompt=range(6)), 6)
    assert manager.get_computed_blocks(make_request("b", prompt=range(6))) == []
