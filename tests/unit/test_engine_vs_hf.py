"""Greedy outputs token for token against Hugging Face transformers (the oracle), float32 on CPU.

Tiny KV caches and token budgets force chunked prefill, preemption and prefix-cache hits;
the stats prove they happened. Synchronous and async scheduling alike (async for the Llama
and Qwen2 shapes: the other architectures differ only inside the model).
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
    # Qwen3: per-head q/k norms; head_dim 32 != hidden_size / num_heads = 16.
    "qwen3-gqa2-h32-tied": ("qwen3", dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                                          tie_word_embeddings=True)),
    "qwen3-gqa4-h16-untied": ("qwen3", dict(hidden_size=64, num_heads=4, num_kv_heads=1,
                                            tie_word_embeddings=False)),
    # Mistral: sliding windows shorter than most prompts, one of them not a block multiple.
    "mistral-gqa2-w8-untied": ("mistral", dict(hidden_size=64, num_heads=4, num_kv_heads=2, sliding_window=8,
                                               tie_word_embeddings=False)),
    "mistral-gqa4-h32-w5-tied": ("mistral", dict(hidden_size=64, num_heads=4, num_kv_heads=1, head_dim=32,
                                                 sliding_window=5, tie_word_embeddings=True)),
    # Phi-3: fused qkv_proj / gate_up_proj checkpoints. Default rope; LongRoPE with the long
    # factors (a model longer than its original length 2: Hugging Face takes them for any
    # prompt past 2 tokens) and the short ones (max = original length), the latter windowed.
    "phi3-gqa2-untied": ("phi3", dict(hidden_size=64, num_heads=4, num_kv_heads=2, tie_word_embeddings=False)),
    "phi3-longrope-long-mha-tied": ("phi3", dict(hidden_size=64, num_heads=4, num_kv_heads=4, tie_word_embeddings=True,
                                                 rope_scaling="longrope", original_max_position_embeddings=2)),
    "phi3-longrope-short-gqa4-w6": ("phi3", dict(hidden_size=64, num_heads=4, num_kv_heads=1, sliding_window=6,
                                                 rope_scaling="longrope", original_max_position_embeddings=256)),
    # Mixtures of experts: Mixtral renormalises its top-2; Qwen3-MoE with and without norm_topk_prob.
    "mixtral-e4-top2": ("mixtral", dict(hidden_size=64, num_heads=4, num_kv_heads=2, num_experts=4,
                                        num_experts_per_tok=2, tie_word_embeddings=False)),
    "qwen3moe-e8-top4-norm": ("qwen3_moe", dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32,
                                                num_experts=8, num_experts_per_tok=4, norm_topk_prob=True,
                                                tie_word_embeddings=False)),
    "qwen3moe-e8-top2-raw": ("qwen3_moe", dict(hidden_size=64, num_heads=4, num_kv_heads=1, num_experts=8,
                                               num_experts_per_tok=2, norm_topk_prob=False,
                                               tie_word_embeddings=True)),
}
ASYNC_SHAPES = ("llama-gqa2-h16-untied", "llama-gqa4-h32-tied", "qwen2-mha-h16-tied", "qwen2-gqa2-h32-untied")
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
# A windowed model frees the blocks behind its window, so it preempts only with more requests
# at once in a smaller cache (still at least the longest request: prompt 71 + 12 tokens).
WINDOWED_SETUP_CHANGES = dict(max_num_batched_tokens=32, max_num_seqs=8, block_size=4, num_kv_blocks=21)


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


def combinations():
    """(shape, engine setup, async_scheduling) for every test case."""
    for shape in SHAPES:
        for setup in ENGINE_SETUPS:
            for async_scheduling in ([False, True] if shape in ASYNC_SHAPES else [False]):
                mode = "async" if async_scheduling else "sync"
                yield pytest.param(shape, setup, async_scheduling, id=f"{shape}-{setup}-{mode}")


@pytest.fixture(scope="module")
def model_and_reference(request, make_model_dir):
    arch, sizes = SHAPES[request.param]
    model_dir = make_model_dir(arch, num_layers=2, intermediate_size=128, **sizes)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompt_ids = [tokenizer(p).input_ids for p in PROMPTS]
    return model_dir, prompt_ids, hf_greedy(model_dir, prompt_ids), sizes.get("sliding_window") is not None


@pytest.mark.parametrize("model_and_reference,setup,async_scheduling", list(combinations()),
                         indirect=["model_and_reference"])
def test_greedy_tokens_and_logprobs_equal_transformers(model_and_reference, setup, async_scheduling):
    model_dir, prompt_ids, reference, is_windowed = model_and_reference
    engine_setup = {**ENGINE_SETUPS[setup], **(WINDOWED_SETUP_CHANGES if is_windowed else {})}
    llm = LLM(str(model_dir), dtype="float32", async_scheduling=async_scheduling, **engine_setup)
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
    if is_windowed:   # blocks behind the window were freed
        assert llm.engine.scheduler.block_manager.num_freed_behind_window > 0
    assert stats.kv_cache_usage == 0.0 and not llm.engine.has_unfinished_requests()
