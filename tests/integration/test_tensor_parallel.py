"""Tensor parallelism on the CPU (gloo ranks in spawned processes): token ids equal to TP=1 and to
transformers, float32.

Each case builds one TP engine (N - 1 spawned ranks) and runs every check on it. The engine setup is
tiny on purpose: chunked prefill, preemption and prefix hits happen, so resumed requests, partial
prefills and shared blocks all cross the ranks.
"""
import multiprocessing

import pytest
import torch

from qinfer import LLM, SamplingParams
from tests.logprobs_support import sampled_logprobs

MAX_TOKENS = 10
MODELS = {
    # 2 kv heads: split at TP=2, each replicated on 2 ranks at TP=4.
    "llama-gqa2": ("llama", dict(hidden_size=64, num_heads=4, num_kv_heads=2, tie_word_embeddings=False,
                                 rope_scaling="llama3")),
    # 1 kv head: every rank holds a copy.
    "llama-mqa": ("llama", dict(hidden_size=64, num_heads=4, num_kv_heads=1, head_dim=32,
                                tie_word_embeddings=True)),
    # q/k/v biases, tied head, a vocabulary no TP size divides (padded vocab shards).
    "qwen2-tied": ("qwen2", dict(hidden_size=64, num_heads=4, num_kv_heads=2, tie_word_embeddings=True,
                                 vocab_size=509)),
    # Mixtures of experts: every rank holds a slice of each expert's FFN width.
    "mixtral": ("mixtral", dict(hidden_size=64, num_heads=4, num_kv_heads=2, num_experts=4,
                                num_experts_per_tok=2, tie_word_embeddings=False)),
    "qwen3-moe": ("qwen3_moe", dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=32, num_experts=8,
                                    num_experts_per_tok=4, moe_intermediate_size=32, tie_word_embeddings=True)),
}
CASES = [("llama-gqa2", 2), ("llama-gqa2", 4), ("llama-mqa", 4), ("qwen2-tied", 2), ("mixtral", 2),
         ("qwen3-moe", 4)]
ENGINE = dict(dtype="float32", enable_prefix_caching=True, max_num_batched_tokens=16, max_num_seqs=4,
              block_size=4, num_kv_blocks=16)
SHARED = "Once upon a time, in a city of glass and rain, people wrote letters to machines."
PROMPTS = ["The quick brown fox", SHARED + " The machines", "Hello", SHARED + " They answered",
           "A small robot paints the quiet harbour while the night train waits.", "My old teacher"]
GREEDY = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True, logprobs=2)
SAMPLED = [SamplingParams(temperature=1.0, seed=11, max_tokens=MAX_TOKENS, ignore_eos=True),
           SamplingParams(temperature=0.8, top_p=0.9, top_k=40, seed=5, max_tokens=MAX_TOKENS, ignore_eos=True),
           SamplingParams(temperature=1.2, min_p=0.05, repetition_penalty=1.3, presence_penalty=0.5,
                          seed=99, max_tokens=MAX_TOKENS, ignore_eos=True)]


def model_dir_of(make_model_dir, name):
    arch, sizes = MODELS[name]
    return make_model_dir(arch, num_layers=2, intermediate_size=128, **sizes)


def hf_greedy(model_dir, prompt_ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = []
    with torch.no_grad():
        for ids in prompt_ids:
            tokens = list(ids)
            for _ in range(MAX_TOKENS):
                tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
            results.append(tokens[len(ids):])
    return results


def run(llm, prompts, params):
    return [o.outputs[0] for o in llm.generate(prompts, params, use_tqdm=False)]


def token_ids(completions):
    return [c.token_ids for c in completions]


@pytest.fixture(scope="module")
def single_rank(make_model_dir):
    """name -> (model_dir, prompt ids, TP=1 greedy completions, TP=1 sampled completions, HF greedy ids)."""
    cache = {}

    def get(name):
        if name not in cache:
            model_dir = model_dir_of(make_model_dir, name)
            llm = LLM(str(model_dir), **ENGINE)
            prompt_ids = [llm.get_tokenizer()(p).input_ids for p in PROMPTS]
            cache[name] = (model_dir, prompt_ids, run(llm, prompt_ids, GREEDY),
                           run(llm, prompt_ids[:3], SAMPLED), hf_greedy(model_dir, prompt_ids))
        return cache[name]

    return get


@pytest.mark.parametrize("name,tp_size", CASES, ids=[f"{n}-tp{tp}" for n, tp in CASES])
def test_tp_tokens_equal_single_rank_and_transformers(single_rank, name, tp_size):
    model_dir, prompt_ids, greedy_tp1, sampled_tp1, hf_ids = single_rank(name)
    llm = LLM(str(model_dir), tensor_parallel_size=tp_size, **ENGINE)
    try:
        greedy = run(llm, prompt_ids, GREEDY)
        sampled = run(llm, prompt_ids[:3], SAMPLED)
        stats = llm.engine.stats
    finally:
        llm.engine.executor.close()
    assert token_ids(greedy) == hf_ids
    assert token_ids(greedy) == token_ids(greedy_tp1)
    for got, expected in zip(greedy, greedy_tp1):
        assert sampled_logprobs(got) == pytest.approx(sampled_logprobs(expected), abs=1e-4)
    assert token_ids(sampled) == token_ids(sampled_tp1)
    assert stats.num_preemptions > 0 and stats.prefix_cache_hits > 0
    assert not multiprocessing.active_children()      # close() ended every rank


@pytest.mark.parametrize("sizes,tp_size,message", [
    (dict(hidden_size=48, num_heads=3, num_kv_heads=3), 2, "num_attention_heads=3"),
    (dict(hidden_size=48, num_heads=6, num_kv_heads=3), 2, "num_key_value_heads=3"),
    (dict(hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=90), 4, "intermediate_size"),
    (dict(hidden_size=64, num_heads=4, num_kv_heads=2, moe_intermediate_size=30), 4, "moe_intermediate_size"),
])
def test_tp_size_the_model_cannot_take_is_refused_before_any_rank_starts(make_model_dir, sizes, tp_size,
                                                                         message):
    arch = "qwen3_moe" if "moe_intermediate_size" in sizes else "llama"
    model_dir = make_model_dir(arch, num_layers=1, **{"intermediate_size": 128, **sizes})
    with pytest.raises(ValueError, match=f"tensor_parallel_size={tp_size} .*{message}"):
        LLM(str(model_dir), tensor_parallel_size=tp_size, num_kv_blocks=8)
    assert not multiprocessing.active_children()


def test_tp_needs_as_many_cuda_devices_as_ranks(tiny_llama_dir):
    num_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    tp_size = max(2, num_devices + 1)
    with pytest.raises(ValueError, match=f"needs {tp_size} CUDA devices, this machine has {num_devices}"):
        LLM(str(tiny_llama_dir), device="cuda", tensor_parallel_size=tp_size, num_kv_blocks=8)
    assert not multiprocessing.active_children()
