"""Sampling through the whole engine: seeds, top_k=1, stop strings / ids, max and min tokens, n > 1.

Every test runs with synchronous and with async scheduling.
"""
import pytest

from qinfer import LLM, SamplingParams

PROMPTS = ["The quick brown fox", "Hello, world!", "A small robot paints the quiet harbour", "The river"]


@pytest.fixture(scope="module", params=[False, True], ids=["sync", "async"])
def llm(tiny_llama_dir, request):
    # Few blocks and a small budget: preemption and chunking happen under the sampling tests too.
    return LLM(str(tiny_llama_dir), dtype="float32", max_num_seqs=4, max_num_batched_tokens=16,
               block_size=4, num_kv_blocks=24, async_scheduling=request.param)


def greedy(llm, prompt, max_tokens=16):
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    return llm.generate(prompt, params, use_tqdm=False)[0].outputs[0]


def test_seeded_request_reproduces_alone_and_in_a_mixed_batch(llm):
    seeded = SamplingParams(temperature=1.0, seed=1234, max_tokens=16, ignore_eos=True)
    alone = llm.generate(PROMPTS[0], seeded, use_tqdm=False)[0].outputs[0].token_ids
    others = [SamplingParams(temperature=0.8, top_p=0.9, max_tokens=24, ignore_eos=True),
              SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True),
              SamplingParams(temperature=1.2, seed=7, max_tokens=20, ignore_eos=True)]
    mixed = llm.generate(PROMPTS[1:] + [PROMPTS[0]], others + [seeded], use_tqdm=False)
    assert mixed[-1].outputs[0].token_ids == alone


def test_top_k_one_equals_greedy(llm):
    top1 = SamplingParams(temperature=1.0, top_k=1, max_tokens=16, ignore_eos=True)
    outputs = llm.generate(PROMPTS, top1, use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == [greedy(llm, p).token_ids for p in PROMPTS]


def test_stop_string_ends_output_and_is_left_out_of_the_text(llm):
    full = greedy(llm, PROMPTS[2], max_tokens=24)
    stop = full.text[8:11]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=[stop])
    completion = llm.generate(PROMPTS[2], params, use_tqdm=False)[0].outputs[0]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop
    assert completion.text == full.text[:full.text.index(stop)]
    assert completion.token_ids == full.token_ids[:len(completion.token_ids)]


def test_stop_string_kept_when_include_stop_str_in_output(llm):
    full = greedy(llm, PROMPTS[2], max_tokens=24)
    stop = full.text[8:11]
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, stop=stop,
                            include_stop_str_in_output=True)
    completion = llm.generate(PROMPTS[2], params, use_tqdm=False)[0].outputs[0]
    assert completion.text == full.text[:full.text.index(stop) + len(stop)]


def test_stop_token_id_ends_output_with_that_token(llm):
    full = greedy(llm, PROMPTS[3])
    stop_id = full.token_ids[4]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop_token_ids=[stop_id])
    completion = llm.generate(PROMPTS[3], params, use_tqdm=False)[0].outputs[0]
    first = full.token_ids.index(stop_id)
    assert completion.token_ids == full.token_ids[:first + 1]
    assert completion.finish_reason == "stop" and completion.stop_reason == stop_id


def test_max_tokens_finishes_with_length(llm):
    completion = greedy(llm, PROMPTS[0], max_tokens=5)
    assert len(completion.token_ids) == 5 and completion.finish_reason == "length"


def test_min_tokens_masks_stop_ids_until_reached(llm):
    full = greedy(llm, PROMPTS[3])
    stop_id = full.token_ids[1]
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, stop_token_ids=[stop_id],
                            min_tokens=6)
    completion = llm.generate(PROMPTS[3], params, use_tqdm=False)[0].outputs[0]
    assert len(completion.token_ids) >= 6
    assert stop_id not in completion.token_ids[:6]


def test_n_completions_differ_and_reproduce_with_the_parent_seed(llm):
    params = SamplingParams(n=3, temperature=1.0, seed=42, max_tokens=12, ignore_eos=True)
    first, second = (llm.generate(PROMPTS[0], params, use_tqdm=False)[0] for _ in range(2))
    assert [c.index for c in first.outputs] == [0, 1, 2]
    token_ids = [c.token_ids for c in first.outputs]
    assert len({tuple(t) for t in token_ids}) == 3
    assert [c.token_ids for c in second.outputs] == token_ids


def test_step_deltas_add_up_to_the_final_output(llm):
    engine = llm.engine
    engine.add_request("delta", PROMPTS[2], SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True,
                                                           stop=["zz"]))
    tokens, text, last = [], "", None
    while engine.has_unfinished_requests():
        for output in engine.step():
            tokens += output.outputs[0].new_token_ids
            text += output.outputs[0].new_text
            last = output
    assert last.finished and tokens == last.outputs[0].token_ids and text == last.outputs[0].text


def test_abort_finishes_only_that_request(llm):
    engine = llm.engine
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    engine.add_request("keep", PROMPTS[0], params)
    engine.add_request("drop", PROMPTS[1], params)
    engine.step()
    engine.abort_request("drop")
    finished = {}
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})
    assert finished["drop"].outputs[0].finish_reason == "abort"
    assert finished["keep"].outputs[0].token_ids == greedy(llm, PROMPTS[0], max_tokens=12).token_ids


def test_n_completions_share_the_prompt_blocks(llm):
    params = SamplingParams(n=2, temperature=1.0, seed=3, max_tokens=4, ignore_eos=True)
    output = llm.generate(PROMPTS[2], params, use_tqdm=False)[0]
    # The second child reads every full prompt block the first fills (block_size 4; last token computed).
    assert output.num_cached_tokens == 4 * ((len(output.prompt_token_ids) - 1) // 4)


def test_num_admissible_counts_free_sequence_slots(llm):
    engine = llm.engine
    assert engine.num_admissible() == 4
    for i in range(3):
        engine.add_request(f"slot-{i}", PROMPTS[i], SamplingParams(max_tokens=2))
    assert engine.num_admissible() == 1 and engine.get_num_unfinished_requests() == 3
    while engine.has_unfinished_requests():
        engine.step()
    assert engine.num_admissible() == 4


def test_chat_template_gives_token_ids(llm):
    ids = llm.engine.apply_chat_template([{"role": "user", "content": "Hello"}])
    assert ids[0] == llm.get_tokenizer().bos_token_id and all(isinstance(t, int) for t in ids)
