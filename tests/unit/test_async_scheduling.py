"""Async scheduling gives the synchronous engine's tokens where requests finish while a step is in flight.

Step N+1 is launched before step N's ids reach the host, so a request that stops at step N
(stop id, EOS) was already scheduled again: that token must be dropped, its blocks freed, and
nothing of it may leak into other requests, the prefix cache or a later request with its id.
"""
import pytest

from qinfer import LLM, SamplingParams
from tests.logprobs_support import sampled_logprobs

SHARED_PREFIX = "Once upon a time, in a city of glass and rain, people wrote letters to machines."
PROMPTS = [SHARED_PREFIX + " The first", "The quick brown fox", SHARED_PREFIX + " Then", "Hello",
           SHARED_PREFIX, "A small robot paints the quiet harbour", SHARED_PREFIX + " And so", "The river"]
# Few blocks and a small budget: preemption, chunked prefill and prefix-cache hits all happen.
TIGHT = dict(dtype="float32", max_num_seqs=4, max_num_batched_tokens=16, block_size=4, num_kv_blocks=26,
             enable_prefix_caching=True)


def make_llm(model_dir, async_scheduling):
    return LLM(str(model_dir), async_scheduling=async_scheduling, **TIGHT)


def completions(llm, prompts, params):
    return [(c.token_ids, c.text, c.finish_reason, c.stop_reason)
            for output in llm.generate(prompts, params, use_tqdm=False) for c in output.outputs]


@pytest.fixture(scope="module")
def greedy_reference(tiny_llama_dir):
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)
    return [c[0] for c in completions(make_llm(tiny_llama_dir, False), PROMPTS, params)]


def early_stop_params(greedy_reference):
    """Half the requests stop on a token id early on (greedy or seeded), the others run to max_tokens."""
    params = []
    for i, tokens in enumerate(greedy_reference):
        if i % 2:
            params.append(SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                                         stop_token_ids=[tokens[2 + i % 3]]))
        else:
            params.append(SamplingParams(temperature=0.9, seed=100 + i, max_tokens=16 + i, ignore_eos=True,
                                         stop_token_ids=[tokens[1]], n=1 + i % 3))
    return params


def test_early_stops_with_preemption_and_prefix_caching_match_sync(tiny_llama_dir, greedy_reference):
    params = early_stop_params(greedy_reference)
    expected = completions(make_llm(tiny_llama_dir, False), PROMPTS, params)
    llm = make_llm(tiny_llama_dir, True)
    assert completions(llm, PROMPTS, params) == expected
    assert {finish_reason for _, _, finish_reason, _ in expected} == {"stop", "length"}
    stats = llm.engine.stats
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert stats.kv_cache_usage == 0.0 and not llm.engine.has_unfinished_requests()
    # The dropped in-flight tokens left nothing behind: a second run gives the same again.
    assert completions(llm, PROMPTS, params) == expected


def test_request_id_reused_right_after_a_stop_gets_its_own_tokens(tiny_llama_dir, greedy_reference):
    stop_early = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                                stop_token_ids=[greedy_reference[1][3]])
    plain = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    engine = make_llm(tiny_llama_dir, True).engine
    engine.add_request("x", PROMPTS[1], stop_early)
    while not any(o.finished for o in engine.step()):
        pass
    assert engine._in_flight is not None   # the step launched after the stop still samples for "x"
    engine.add_request("x", PROMPTS[3], plain)
    outputs = {}
    while engine.has_unfinished_requests():
        outputs.update({o.request_id: o for o in engine.step() if o.finished})
    assert outputs["x"].outputs[0].token_ids == greedy_reference[3][:10]


def test_step_reports_the_previous_step_and_ends_with_nothing_unfinished(tiny_llama_dir):
    engine = make_llm(tiny_llama_dir, True).engine
    engine.add_request("a", None, SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
                       prompt_token_ids=[5, 6, 7])
    assert engine.step() == []            # the prefill is launched; its id is not on the host yet
    deltas = [engine.step() for _ in range(3)]
    assert [len(d[0].outputs[0].new_token_ids) for d in deltas] == [1, 1, 1]
    assert deltas[-1][0].finished and not engine.has_unfinished_requests()


def test_penalties_logprobs_and_min_tokens_match_sync(tiny_llama_dir):
    # Penalties count output ids on the host: the step waits for the ids in flight first.
    params = [SamplingParams(temperature=0.8, seed=11 + i, max_tokens=14, ignore_eos=True, logprobs=3,
                             repetition_penalty=1.2, presence_penalty=0.3, frequency_penalty=0.2,
                             min_tokens=4) for i in range(len(PROMPTS))]

    def run(async_scheduling):
        outputs = make_llm(tiny_llama_dir, async_scheduling).generate(PROMPTS, params, use_tqdm=False)
        return [c for output in outputs for c in output.outputs]

    for got, expected in zip(run(True), run(False)):
        assert got.token_ids == expected.token_ids
        # Batches differ between the modes: logits may differ in the last bits.
        assert sampled_logprobs(got) == pytest.approx(sampled_logprobs(expected), abs=1e-5)
        assert [list(lp) for lp in got.logprobs] == [list(lp) for lp in expected.logprobs]   # same top ids
