"""ModelRunner numerics against Hugging Face transformers (float32, same directory).

Prompts go through execute_model with hand-built SchedulerOutputs (tests/unit/runner_driver.py):
whole prefill, chunked prefill, decode, ragged batches, preemption. Every position's logits
are compared with HF's forward over the same tokens; greedy outputs with HF generate.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from qinfer.sampling_params import SamplingParams
from tests.unit.runner_driver import RunnerDriver, make_runner

PROMPTS = ["The quick brown fox jumps over the lazy dog.", "Hello, world!",
           "Once upon a time, in a city of glass and rain, people wrote letters to machines.", "A"]
ATOL = 1e-4
# HF generate(min_new_tokens=...) suppresses EOS; min_tokens does the same here.
GREEDY = SamplingParams(temperature=0.0, min_tokens=16, max_tokens=16)


@pytest.fixture(scope="module", params=["tiny_llama_dir", "tiny_qwen2_dir"])
def model_dir(request):
    return request.getfixturevalue(request.param)


@pytest.fixture(scope="module")
def hf_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompts(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return [tokenizer(p)["input_ids"] for p in PROMPTS]


def hf_logits(hf_model, token_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(torch.tensor([token_ids])).logits[0]  # [L, V]


def hf_greedy(hf_model, prompt: list[int], max_new_tokens: int) -> list[int]:
    with torch.no_grad():
        input_ids = torch.tensor([prompt])
        out = hf_model.generate(input_ids, attention_mask=torch.ones_like(input_ids), do_sample=False,
                                max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                pad_token_id=hf_model.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def assert_logits_match(driver: RunnerDriver, hf_model) -> None:
    """Every computed position of every request: runner logits == HF logits of the same tokens."""
    for req_id, by_position in driver.hidden.items():
        tokens = driver.requests[req_id].all_tokens
        positions = sorted(by_position)
        assert positions == list(range(len(positions)))
        with torch.no_grad():
            logits = driver.runner.model.compute_logits(torch.stack([by_position[p] for p in positions]))
        expected = hf_logits(hf_model, tokens[:len(positions)])
        torch.testing.assert_close(logits, expected, atol=ATOL, rtol=0)


def test_whole_prefill_logits(model_dir, hf_model, prompts):
    driver = RunnerDriver(make_runner(model_dir), capture_hidden=True)
    driver.add("r0", prompts[2])
    out = driver.step({"r0": len(prompts[2])})
    assert out.sampled_token_ids == [[int(hf_logits(hf_model, prompts[2])[-1].argmax())]]
    assert_logits_match(driver, hf_model)


@pytest.mark.parametrize("token_budget", [5, 1024])
def test_batched_chunked_prefill_then_decode(model_dir, hf_model, prompts, token_budget):
    """Ragged requests batched; budget 5 forces prefill chunks that share steps with decodes."""
    driver = RunnerDriver(make_runner(model_dir), capture_hidden=True)
    for i, prompt in enumerate(prompts):
        driver.add(f"r{i}", prompt, GREEDY)
    outputs = driver.run(max_tokens=6, token_budget=token_budget)
    assert_logits_match(driver, hf_model)
    for i, prompt in enumerate(prompts):
        assert outputs[f"r{i}"] == hf_greedy(hf_model, prompt, 6)


def test_outputs_vary_between_prompts(model_dir, prompts):
    """The tiny models must not be degenerate: different prompts, different greedy continuations."""
    driver = RunnerDriver(make_runner(model_dir))
    for i, prompt in enumerate(prompts):
        driver.add(f"r{i}", prompt, GREEDY)
    outputs = driver.run(max_tokens=4)
    assert len({tuple(o) for o in outputs.values()}) > 1
    assert any(len(set(o)) > 1 for o in outputs.values())


def test_preempted_request_resumes_identically(model_dir, hf_model, prompts):
    driver = RunnerDriver(make_runner(model_dir))
    driver.add("a", prompts[0], GREEDY)
    driver.add("b", prompts[1])
    driver.run(max_tokens=3)
    driver.preempt("a")
    driver.finish("b")
    assert driver.run(max_tokens=7)["a"] == hf_greedy(hf_model, prompts[0], 7)


def test_sharded_checkpoint_loads_identically(make_model_dir, tiny_llama_dir):
    from tests.fixtures_models import TINY_LLAMA

    sharded_dir = make_model_dir("llama", shards=3, **TINY_LLAMA)
    index = json.loads((sharded_dir / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    sharded, single = make_runner(sharded_dir).model, make_runner(tiny_llama_dir).model
    for (name, param), (_, expected) in zip(sharded.state_dict().items(), single.state_dict().items()):
        assert torch.equal(param, expected), name
