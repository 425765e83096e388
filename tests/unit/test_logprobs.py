"""vLLM-shaped logprobs and prompt logprobs against a direct computation from transformers' logits.

The oracle: one transformers forward over prompt + generated tokens, log_softmax per position.
Each position's dict must hold the token there and the top-k, with vLLM's ranks (the token's rank
in the whole vocabulary, the top-k 1..k) and decoded tokens (tokenizer.decode([id])). The checks
read the outputs the way code written against vLLM's LLM.generate does.
"""
import pytest
import torch

from qinfer import LLM, SamplingParams


def hf_logprobs(model, ids: list[int]) -> torch.Tensor:
    """[len(ids), V]: row i is log p(. | ids[:i + 1])."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    return logits.float().log_softmax(-1)


def expected_position(row: torch.Tensor, token_id: int, k: int, tokenizer) -> dict:
    """vLLM's dict for one position: {id: (logprob, rank, decoded_token)}."""
    entries = {token_id: (float(row[token_id]), 1 + int((row > row[token_id]).sum()))}
    top = row.topk(k)
    entries.update({t: (float(v), rank) for rank, (v, t) in enumerate(zip(top.values, top.indices.tolist()), 1)})
    return {t: (lp, rank, tokenizer.decode([t])) for t, (lp, rank) in entries.items()}


def assert_position(position, expected: dict) -> None:
    assert list(position) == list(expected)   # the token at the position first, then the top-k in order
    for token_id, (logprob, rank, decoded) in expected.items():
        entry = position[token_id]
        assert entry.logprob == pytest.approx(logprob, abs=2e-4)
        assert entry.rank == rank and entry.decoded_token == decoded


def check_against_transformers(outputs, params: SamplingParams, model, tokenizer) -> None:
    for out in outputs:
        prompt = out.prompt_token_ids
        for completion in out.outputs:
            rows = hf_logprobs(model, prompt + completion.token_ids)
            assert len(completion.logprobs) == len(completion.token_ids)
            for i, token_id in enumerate(completion.token_ids):
                expected = expected_position(rows[len(prompt) + i - 1], token_id, params.logprobs, tokenizer)
                assert_position(completion.logprobs[i], expected)
        if params.prompt_logprobs is None:
            assert out.prompt_logprobs is None
            continue
        rows = hf_logprobs(model, prompt)
        assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
        for i in range(1, len(prompt)):
            expected = expected_position(rows[i - 1], prompt[i], params.prompt_logprobs, tokenizer)
            assert_position(out.prompt_logprobs[i], expected)


def hf_model_and_tokenizer(model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(model_dir))


PROMPTS = ["The quick brown fox jumps over the lazy dog and runs far away", "Hello", "A small robot paints"]


@pytest.fixture(scope="module")
def tiny_hf(tiny_llama_dir):
    return hf_model_and_tokenizer(tiny_llama_dir)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
def test_tiny_model_logprobs_under_chunking_preemption_and_n(tiny_llama_dir, tiny_hf, async_scheduling):
    # 8-token budget: the long prompt is prefilled in chunks; 14 blocks of 4: requests get preempted.
    llm = LLM(str(tiny_llama_dir), dtype="float32", max_num_batched_tokens=8, max_num_seqs=4, block_size=4,
              num_kv_blocks=14, async_scheduling=async_scheduling)
    greedy = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, logprobs=3, prompt_logprobs=2)
    sampled = SamplingParams(temperature=1.0, seed=3, n=2, max_tokens=10, ignore_eos=True, logprobs=2,
                             prompt_logprobs=0)
    outputs = llm.generate(PROMPTS + PROMPTS[:1], [greedy] * len(PROMPTS) + [sampled], use_tqdm=False)
    check_against_transformers(outputs[:-1], greedy, *tiny_hf)
    check_against_transformers(outputs[-1:], sampled, *tiny_hf)
    ranks = [entry.rank for c in outputs[-1].outputs for pos, t in zip(c.logprobs, c.token_ids) for entry in [pos[t]]]
    assert max(ranks) > 1                 # random draws: ranks of tokens that were not the argmax
    assert llm.engine.stats.num_preemptions > 0


def test_prompt_logprobs_skip_the_prefix_cache_and_logprobs_zero_is_the_token_alone(tiny_llama_dir, tiny_hf):
    llm = LLM(str(tiny_llama_dir), dtype="float32", block_size=4, num_kv_blocks=64, enable_prefix_caching=True)
    plain = SamplingParams(temperature=0.0, max_tokens=4)
    llm.generate(PROMPTS[:1], plain, use_tqdm=False)                       # fills the prefix cache
    assert llm.generate(PROMPTS[:1], plain, use_tqdm=False)[0].num_cached_tokens > 0
    params = SamplingParams(temperature=0.0, max_tokens=4, logprobs=0, prompt_logprobs=1)
    [out] = llm.generate(PROMPTS[:1], params, use_tqdm=False)
    assert out.num_cached_tokens == 0                                      # every prompt position computed
    assert all(list(position) == [t] for position, t in zip(out.outputs[0].logprobs, out.outputs[0].token_ids))
    check_against_transformers([out], params, *tiny_hf)


def test_requests_without_logprobs_get_none(tiny_llama_dir):
    llm = LLM(str(tiny_llama_dir), dtype="float32", num_kv_blocks=32)
    [out] = llm.generate(PROMPTS[:1], SamplingParams(max_tokens=3), use_tqdm=False)
    assert out.outputs[0].logprobs is None and out.prompt_logprobs is None


def test_real_model_logprobs_and_prompt_logprobs_equal_transformers(smollm2_dir):
    llm = LLM(str(smollm2_dir), dtype="float32", num_kv_blocks=16, max_num_batched_tokens=16)
    params = SamplingParams(temperature=0.0, max_tokens=6, logprobs=5, prompt_logprobs=5)
    outputs = llm.chat([{"role": "user", "content": "What is the capital of France?"}], params, use_tqdm=False)
    outputs += llm.generate(["The capital of Germany is"], params, use_tqdm=False)
    check_against_transformers(outputs, params, *hf_model_and_tokenizer(smollm2_dir))
