"""Bad requests fail alone with a clear InvalidRequestError; the engine keeps serving the others."""
import pydantic
import pytest

from qinfer import LLM, InvalidRequestError, SamplingParams

GOOD = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tiny_llama_dir):
    return LLM(str(tiny_llama_dir), dtype="float32", max_num_seqs=4, block_size=4, num_kv_blocks=16)


def serves_a_good_request(engine, request_id):
    engine.add_request(request_id, "The quick brown fox", GOOD)
    finished = []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
    return [o.outputs[0].finish_reason for o in finished] == ["length"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(prompt=""), "empty"),
    (dict(prompt=None), "empty"),
    (dict(prompt_token_ids=[]), "empty"),
    (dict(prompt_token_ids=[1, -1]), "vocabulary"),
    (dict(prompt_token_ids=[1, 10**6]), "vocabulary"),
    (dict(prompt_token_ids=[5] * 70), "KV cache"),
])
def test_bad_prompt_is_refused_and_the_engine_goes_on(llm, kwargs, message):
    engine = llm.engine
    with pytest.raises(InvalidRequestError, match=message):
        engine.add_request("bad", sampling_params=GOOD, **kwargs)
    assert serves_a_good_request(engine, "after-bad")


def test_prompt_longer_than_max_model_len_is_refused(llm):
    engine = llm.engine
    with pytest.raises(InvalidRequestError, match="max_model_len"):
        engine.add_request("long", sampling_params=GOOD, prompt_token_ids=[5] * engine.max_model_len)


def test_duplicate_request_id_is_refused_while_the_first_runs(llm):
    engine = llm.engine
    engine.add_request("twice", "Hello", GOOD)
    with pytest.raises(InvalidRequestError, match="already in use"):
        engine.add_request("twice", "Hello", GOOD)
    while engine.has_unfinished_requests():
        engine.step()
    assert serves_a_good_request(engine, "twice")      # free again once finished


def test_invalid_sampling_params_are_refused():
    with pytest.raises(pydantic.ValidationError, match="temperature"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(pydantic.ValidationError, match="min_tokens"):
        SamplingParams(min_tokens=5, max_tokens=2)


def test_sampling_params_of_the_wrong_type_are_refused(llm):
    with pytest.raises(InvalidRequestError, match="SamplingParams"):
        llm.engine.add_request("dict", "Hello", {"temperature": 0.0})


def test_generate_refuses_a_bad_prompt_before_running_anything(llm):
    steps_before = llm.engine.stats.num_steps
    with pytest.raises(InvalidRequestError):
        llm.generate(["Hello", "", "The river"], GOOD, use_tqdm=False)
    assert llm.engine.stats.num_steps == steps_before and not llm.engine.has_unfinished_requests()
    assert len(llm.generate(["Hello", [5, 6, 7]], GOOD, use_tqdm=False)) == 2
