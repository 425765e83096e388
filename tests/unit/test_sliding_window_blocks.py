"""Block freeing behind a sliding window: a running request holds only the blocks its next
queries can see, the freed blocks serve other requests, and nothing is freed twice."""
from qinfer.engine.block_manager import BlockManager
from qinfer.engine.request import Request
from qinfer.sampling_params import SamplingParams
from tests.factories import make_request, make_scheduler, run_to_completion, step


def num_held_blocks(scheduler) -> int:
    return scheduler.block_manager.num_blocks - scheduler.block_manager.num_free_blocks


def test_running_request_holds_only_its_window():
    window, block_size = 8, 4
    scheduler = make_scheduler(sliding_window=window, max_num_batched_tokens=6, max_num_seqs=256, max_model_len=256)
    scheduler.add_request(make_request("a", 20, max_tokens=30))
    while scheduler.has_unfinished_requests():
        scheduler_output, _ = step(scheduler)
        request = scheduler.requests.get("a")
        if request is None:
            break
        # The step's first query (its oldest needed key: first - W + 1) through its last token.
        first = request.num_computed_tokens - scheduler_output.num_scheduled_tokens["a"]
        oldest_block = max(0, first - window + 1) // block_size
        assert num_held_blocks(scheduler) == -(-request.num_computed_tokens // block_size) - oldest_block
    block_manager = scheduler.block_manager
    # The last step's query sits at position 48 (50 tokens; the last one is sampled, never fed).
    assert block_manager.num_freed_behind_window == (48 - window + 1) // block_size
    assert block_manager.num_free_blocks == block_manager.num_blocks   # the rest freed once, at the end
    assert all(count == 0 for count in block_manager.ref_counts)


def run_two_requests(sliding_window):
    scheduler = make_scheduler(sliding_window=sliding_window, num_blocks=8, max_num_seqs=256, max_model_len=256)
    for name in "ab":
        scheduler.add_request(make_request(name, 4, max_tokens=20))   # 6 blocks each, 12 > 8
    run_to_completion(scheduler)
    assert all(count == 0 for count in scheduler.block_manager.ref_counts)
    return scheduler


def test_freed_blocks_let_more_requests_run_without_preemption():
    assert run_two_requests(sliding_window=None).num_preemptions > 0
    assert run_two_requests(sliding_window=4).num_preemptions == 0


def test_free_after_window_freeing_releases_each_block_once():
    """What preemption and finishing do: free() skips the blocks released behind the window."""
    manager = BlockManager(num_blocks=8, block_size=4, sliding_window=4)
    request = Request("r", list(range(20)), SamplingParams())
    manager.allocate(request, 20)
    manager.free_blocks_behind_window(request, 19)      # keys 16..19 visible: blocks 0-3 go
    assert request.num_freed_blocks == 4 and manager.num_free_blocks == 7
    manager.free_blocks_behind_window(request, 19)      # idempotent
    assert manager.num_free_blocks == 7
    manager.free(request)
    assert manager.num_free_blocks == 8 and all(count == 0 for count in manager.ref_counts)
    assert request.num_freed_blocks == 0 and request.block_ids == []


def test_block_freed_before_it_was_hashed_is_never_registered():
    """Async scheduling hashes a block once its ids reach the host; if the window freed it
    first (and another request may have taken it), it must not enter the prefix cache."""
    manager = BlockManager(num_blocks=8, block_size=4, sliding_window=1)
    request = Request("r", list(range(9)), SamplingParams())
    manager.allocate(request, 9)
    manager.free_blocks_behind_window(request, 8)       # blocks 0 and 1 freed, none hashed yet
    manager.cache_full_blocks(request, 8)
    assert manager.cached_blocks == {}
    other = Request("o", list(range(9)), SamplingParams())
    assert manager.get_computed_blocks(other) == []
