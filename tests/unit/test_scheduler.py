"""Scheduler (vLLM v1 style) on tiny block counts, with a fake runner: no model."""
from qinfer.engine.request import RequestStatus
from tests.factories import NEXT_TOKEN, fake_runner_output, make_request, make_scheduler, run_to_completion, step

def test_long_prompt_is_chunked_by_the_token_budget():
    scheduler = make_scheduler(max_num_batched_tokens=8)
    scheduler.add_request(make_request("a", 20, max_tokens=2))
    scheduler_output, deltas = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"a": 8} and len(deltas) == 0
    assert len(scheduler_output.new_requests[0].block_ids) == 2            # blocks for the scheduled chunk only
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"a": 8} and scheduler_output.cached_requests[0].num_computed_tokens == 8
    scheduler_output, deltas = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"a": 4} and deltas.new_token_ids == [[NEXT_TOKEN]]
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"a": 1}


def test_running_requests_take_the_budget_before_waiting_ones():
    scheduler = make_scheduler(max_num_batched_tokens=10)
    scheduler.add_request(make_request("a", 6))
    step(scheduler)
    scheduler.add_request(make_request("b", 30))
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"a": 1, "b": 9}
    assert [r.req_id for r in scheduler_output.new_requests] == ["b"] and [r.req_id for r in scheduler_output.cached_requests] == ["a"]


def test_waiting_requests_are_admitted_fcfs_up_to_max_num_seqs():
    scheduler = make_scheduler(max_num_seqs=2)
    for name in "abc":
        scheduler.add_request(make_request(name, 3, max_tokens=2))
    scheduler_output, _ = step(scheduler)
    assert list(scheduler_output.num_scheduled_tokens) == ["a", "b"]
    step(scheduler)                                           # a and b reach max_tokens=2
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.finished_req_ids == {"a", "b"} and list(scheduler_output.num_scheduled_tokens) == ["c"]


def test_out_of_blocks_preempts_the_newest_and_recomputes_it_with_its_output():
    scheduler = make_scheduler(num_blocks=4, block_size=4)
    scheduler.add_request(make_request("old", 8, max_tokens=6))
    scheduler.add_request(make_request("new", 8, max_tokens=6))
    step(scheduler)                                           # 2 blocks each: all 4 blocks used
    scheduler_output, _ = step(scheduler)                                   # old needs a 3rd block -> new is preempted
    assert scheduler_output.num_scheduled_tokens == {"old": 1} and scheduler_output.preempted_req_ids == {"new"}
    assert scheduler.num_preemptions == 1
    new = scheduler.waiting[0]
    assert new.request_id == "new" and new.num_computed_tokens == 0 and new.num_output_tokens == 1
    assert new.status == RequestStatus.PREEMPTED
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_free_blocks == 4


def test_resumed_request_comes_back_in_full_with_its_output_tokens():
    scheduler = make_scheduler(num_blocks=4, block_size=4, enable_prefix_caching=False)
    scheduler.add_request(make_request("old", 8, max_tokens=5))
    scheduler.add_request(make_request("new", 8, max_tokens=5))
    for _ in range(8):
        scheduler_output, _ = step(scheduler)
        resumed = [r for r in scheduler_output.new_requests if r.req_id == "new" and r.output_token_ids]
        if resumed:
            assert scheduler_output.num_scheduled_tokens["new"] == 8 + len(resumed[0].output_token_ids)
            return
    raise AssertionError("the preempted request never resumed")


def test_a_request_alone_never_half_allocates_and_preempts_itself_when_it_cannot_fit():
    scheduler = make_scheduler(num_blocks=3, block_size=4, max_num_batched_tokens=4)
    scheduler.add_request(make_request("a", 8, max_tokens=8))
    scheduler.add_request(make_request("b", 8, max_tokens=8))
    scheduler_output, _ = step(scheduler)
    assert list(scheduler_output.num_scheduled_tokens) == ["a"]            # b does not fit: not admitted at all
    assert scheduler.waiting[0].block_ids == []
    run_to_completion(scheduler)
    assert scheduler.block_manager.num_free_blocks == 3


def test_prefix_hits_skip_computed_blocks_but_keep_the_last_token():
    scheduler = make_scheduler(block_size=4)
    shared = list(range(100, 112))
    scheduler.add_request(make_request("a", prompt=shared + [1], max_tokens=1))
    run_to_completion(scheduler)
    scheduler.add_request(make_request("b", prompt=shared + [2, 3], max_tokens=1))
    scheduler.add_request(make_request("c", prompt=shared, max_tokens=1))
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"b": 2, "c": 4}
    assert {r.req_id: r.num_computed_tokens for r in scheduler_output.new_requests} == {"b": 12, "c": 8}
    assert scheduler.block_manager.num_prefix_hits == 20


def test_max_tokens_and_max_model_len_finish_with_length():
    scheduler = make_scheduler(max_model_len=6)
    scheduler.add_request(make_request("short", 2, max_tokens=2))
    scheduler.add_request(make_request("long", 4, max_tokens=50))
    finished = {}
    for _ in range(5):
        for request in step(scheduler)[1].requests:
            if request.is_finished:
                finished[request.request_id] = (request.finish_reason, request.num_tokens)
    assert finished == {"short": ("length", 4), "long": ("length", 6)}


def test_eos_stops_only_after_min_tokens_and_stop_ids_report_the_id():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("eos", 2, ignore_eos=False, min_tokens=2))
    scheduler.add_request(make_request("stop_id", 2, stop_token_ids=[5]))
    step(scheduler, token_id=0)
    assert scheduler.requests["eos"].num_output_tokens == 1   # EOS before min_tokens: kept going
    _, deltas = step(scheduler, token_id=0)
    eos = [r for r in deltas.requests if r.request_id == "eos"][0]
    assert eos.finish_reason == "stop" and eos.stop_reason is None
    _, deltas = step(scheduler, token_id=5)
    assert deltas.requests[0].finish_reason == "stop" and deltas.requests[0].stop_reason == 5


def test_abort_frees_blocks_and_is_reported_next_update():
    scheduler = make_scheduler(num_blocks=8)
    scheduler.add_request(make_request("a", 8))
    scheduler.add_request(make_request("queued", 4))
    step(scheduler)
    scheduler.abort_requests(["a", "queued", "unknown"])
    assert scheduler.block_manager.num_free_blocks == 8
    scheduler_output = scheduler.schedule()
    deltas = scheduler.update_from_output(scheduler_output, fake_runner_output(scheduler, scheduler_output))
    assert sorted(r.finish_reason for r in deltas.requests) == ["abort", "abort"]
    assert not scheduler.has_unfinished_requests()


def test_finished_ids_reach_the_runner_with_the_next_non_empty_step():
    scheduler = make_scheduler()
    scheduler.add_request(make_request("a", 2, max_tokens=1))
    step(scheduler)
    assert scheduler.schedule().is_empty                     # nothing to run: ids wait
    scheduler.add_request(make_request("b", 2, max_tokens=1))
    assert scheduler.schedule().finished_req_ids == {"a"}


def test_requests_admitted_in_the_same_step_share_the_blocks_one_of_them_fills():
    scheduler = make_scheduler(block_size=4)
    prompt = list(range(100, 110))
    scheduler.add_request(make_request("first", prompt=prompt))
    scheduler.add_request(make_request("sibling", prompt=prompt))
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.num_scheduled_tokens == {"first": 10, "sibling": 2}
    first, sibling = (scheduler.requests[r] for r in ("first", "sibling"))
    assert sibling.block_ids[:2] == first.block_ids[:2] and sibling.num_cached_tokens == 8


def test_a_request_outgrowing_the_whole_kv_cache_finishes_with_length():
    scheduler = make_scheduler(num_blocks=2, block_size=4)
    scheduler.add_request(make_request("a", 6, max_tokens=50))
    finished = []
    for _ in range(10):
        finished += [r for r in step(scheduler)[1].requests if r.is_finished]
    assert [(r.finish_reason, r.num_tokens) for r in finished] == [("length", 9)]
    assert scheduler.block_manager.num_free_blocks == 2


def test_blocks_filled_by_decode_steps_join_the_prefix_cache():
    """Decode steps that need no new block skip the block manager, but one that fills a block registers it."""
    scheduler = make_scheduler(block_size=4)
    scheduler.add_request(make_request("a", 3, max_tokens=6))
    step(scheduler)                                   # prefill 3 tokens; samples the 4th
    scheduler_output, _ = step(scheduler)                           # decode: computes token 4, the first block is full
    assert not scheduler_output.cached_requests[0].new_block_ids and scheduler.requests["a"].num_hashed_blocks == 1
    tokens_of_a = list(scheduler.requests["a"].all_token_ids)
    run_to_completion(scheduler)
    # 3 prompt + 5 computed outputs (the last sampled token is never computed) = 8 tokens: two full blocks.
    prompt_b = tokens_of_a + [NEXT_TOKEN] * 4 + [1]
    scheduler.add_request(make_request("b", prompt=prompt_b, max_tokens=1))
    scheduler_output, _ = step(scheduler)
    assert scheduler_output.new_requests[0].num_computed_tokens == 8
