"""Greedy outputs token for token against Hugging Face transformers (the oracle), float32 on CPU.

Tiny KV caches and token budgets force chunked prefill, preemption and prefix-cache hits;
the stats prove they happened. Synchronous and async scheduling alike.
"""
import pytest
import torch

from qinfer import LLM, SamplingParams
from tests.logprobs_support import sampled_logprobs

MAX_TOKENS = 12
SHAPES = {
    "llama-gqa2-h16-untied": ("llama", dict(hidden_size=64, num_heads=4, num_kv_heads=2, tie_word_embeddings=False)),
    "llama-gqa4-h32-tied": ("llama", dict(hidden_size=64, num_heads=4, num_kv_heads=1, head_dim=32,
                                           tie_word_embeddings=True)),
    "qwen2-mha-h16-tied": ("qwen2", dict(hidden_size=64, num_heads=4, num_kv_heads=4, tie_word_embeddings=True)),
    "qwen2-gqa2-h32-untied": ("qwen2", dict(hidden_size=128, num_heads=4, num_kv_heads=2,
                                             tie_word_embeddings=False)),
}
SHARED_PREFIX = ("Once upon a time, in a city of glass and rain, people wrote letters to machines. "
                 "The machines read every word, thought for a while, and answered")
PROMPTS = [
    "The quick brown fox",
    SHARED_PREFIX + " with stories.",
    "Hello",
    SHARED_PREFIX + " with numbers 1 2 3.",
    "A small robot paints the quiet harbour while the night train waits for a bright morning.",
    SHARED_PREFIX,
    "My old teacher remembers",
    SHARED_PREFIX + " with questions of their own, and then",
    "Every engine",
    "The tired scheduler follows the long queue of jobs.",
]
# Tiny budgets: chunked prefill, few sequences at once, so few blocks that requests get preempted.
ENGINE_SETUPS = {
    "prefix-on": dict(enable_prefix_caching=True, max_num_batched_tokens=16, max_num_seqs=4,
                      block_size=4, num_kv_blocks=28),
    "prefix-off": dict(enable_prefix_caching=False, max_num_batched_tokens=24, max_num_seqs=3,
                       block_size=8, num_kv_blocks=12),
}


def hf_greedy(model_dir, prompt_ids):
    """transformers generate(): greedy continuation and the log-softmax of each chosen token."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None   # like ignore_eos: run the full length, EOS unmasked
    results = []
    for ids in prompt_ids:   # one prompt at a time: no padding in the oracle
        input_ids = torch.tensor([ids])
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                             max_new_tokens=MAX_TOKENS, output_logits=True, return_dict_in_generate=True)
        tokens = out.sequences[0, len(ids):].tolist()
        logprobs = [float(torch.log_softmax(step_logits[0].float(), -1)[t])
                    for step_logits, t in zip(out.logits, tokens)]
        results.append((tokens, logprobs))
    return results


@pytest.fixture(scope="module", params=list(SHAPES))
def model_and_reference(request, make_model_dir):
    arch, sizes = SHAPES[request.param]
    model_dir = make_model_dir(arch, num_layers=2, intermediate_size=128, **sizes)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    return model_dir, prompt_ids, hf_greedy(model_dir, prompt_ids)


@pytest.mark.parametrize("async_scheduling", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("setup", list(ENGINE_SETUPS))
def test_greedy_tokens_and_logprobs_equal_transformers(model_and_reference, setup, async_scheduling):
    model_dir, prompt_ids, reference = model_and_reference
    llm = LLM(str(model_dir), dtype="float32", async_scheduling=async_scheduling, **ENGINE_SETUPS[setup])
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
    outputs = llm.generate(prompt_ids, params, use_tqdm=False)
    for output, (expected_ids, expected_logprobs) in zip(outputs, reference):
        completion = output.outputs[0]
        assert completion.token_ids == expected_ids
        assert completion.finish_reason == "length"
        assert sampled_logprobs(completion) == pytest.approx(expected_logprobs, abs=1e-4)
    stats = llm.engine.stats
    assert stats.num_preemptions > 0
    if ENGINE_SETUPS[setup]["enable_prefix_caching"]:
        assert stats.prefix_cache_hits > 0
        assert any(o.num_cached_tokens > 0 for o in outputs)
    else:
        assert stats.prefix_cache_hits == 0
    assert stats.kv_cache_usage == 0.0 and not llm.engine.has_unfinished_requests()
