"""InputBatch: incremental row updates and the flat step inputs, against direct computation."""
from __future__ import annotations

import torch

from qinfer.contracts.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from qinfer.executor.input_batch import InputBatch
from qinfer.sampling_params import SamplingParams

BLOCK_SIZE = 4


def new_request(req_id: str, prompt: list[int], blocks: list[int], num_computed: int = 0) -> NewRequestData:
    return NewRequestData(req_id, prompt, [], SamplingParams(), blocks, num_computed)


def make_batch() -> InputBatch:
    return InputBatch(max_num_seqs=4, max_model_len=32, block_size=BLOCK_SIZE, vocab_size=100,
                      device=torch.device("cpu"), eos_token_ids=[1])


def test_flat_inputs_of_a_mixed_step():
    batch = make_batch()
    scheduler_output = SchedulerOutput(new_requests=[new_request("a", [10, 11, 12, 13, 14, 15], [7, 2], num_computed=4),
                                       new_request("b", [20, 21, 22], [5])],
                         num_scheduled_tokens={"b": 2, "a": 2})  # b: first chunk; a: the rest (prefix hit)
    batch.update(scheduler_output)
    inputs = batch.prepare(scheduler_output)
    assert inputs.req_ids == ["b", "a"]
    assert inputs.input_ids.tolist() == [20, 21, 14, 15]
    assert inputs.positions.tolist() == [0, 1, 4, 5]
    meta = inputs.attn_metadata
    assert meta.slot_mapping.tolist() == [5 * BLOCK_SIZE, 5 * BLOCK_SIZE + 1, 2 * BLOCK_SIZE, 2 * BLOCK_SIZE + 1]
    assert meta.query_start_loc.tolist() == [0, 2, 4] and meta.seq_lens.tolist() == [2, 6]
    assert meta.block_tables.tolist() == [[5, 0], [7, 2]]
    assert (meta.max_query_len, meta.max_seq_len) == (2, 6)
    assert meta.num_prefills == 2 and not meta.prefills_are_fresh   # a's keys start in the cache
    assert inputs.is_sampling.tolist() == [False, True]  # b is mid-prefill
    assert inputs.logits_indices.tolist() == [3]


def test_prefills_are_fresh_only_without_cached_tokens():
    # Fresh prompts beside a decode: the prefill keys are the step's own rows (the decode's
    # cached context does not count); one prefill chunk on a cached prefix makes the step not fresh.
    batch = make_batch()
    first = SchedulerOutput(new_requests=[new_request("a", [10, 11, 12], [3]), new_request("b", [20, 21], [4])],
                            num_scheduled_tokens={"a": 3, "b": 1})
    batch.update(first)
    meta = batch.prepare(first).attn_metadata
    assert meta.num_prefills == 1 and meta.prefills_are_fresh
    batch = make_batch()
    second = SchedulerOutput(new_requests=[new_request("a", [10, 11, 12, 13, 14, 15], [3, 5], num_computed=4),
                                           new_request("b", [20, 21, 22], [4])],
                             num_scheduled_tokens={"a": 2, "b": 3})
    batch.update(second)
    assert not batch.prepare(second).attn_metadata.prefills_are_fresh


def test_rows_condense_and_keep_their_data_across_steps():
    batch = make_batch()
    batch.update(SchedulerOutput(new_requests=[new_request(r, [i, i + 1], [i]) for i, r in enumerate("abc")],
                                 num_scheduled_tokens={"a": 2, "b": 2, "c": 2}))
    batch.append_sampled(batch.prepare(SchedulerOutput(num_scheduled_tokens={"a": 2, "b": 2, "c": 2}))
                         .sampling_rows, [50, 51, 52])
    scheduler_output = SchedulerOutput(cached_requests=[CachedRequestData("c", [9], 2)], num_scheduled_tokens={"c": 1},
                         finished_req_ids={"a"}, preempted_req_ids={"b"})
    batch.update(scheduler_output)
    assert batch.num_reqs == 1 and batch.row_of == {"c": 0}
    inputs = batch.prepare(scheduler_output)
    assert inputs.input_ids.tolist() == [52] and inputs.positions.tolist() == [2]
    assert inputs.attn_metadata.slot_mapping.tolist() == [2 * BLOCK_SIZE + 2]
    assert batch.block_table[0, :2].tolist() == [2, 9]
