"""ModelRunner on a CUDA GPU: numerics against transformers, bf16 'auto', memory profiling."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from qinfer.sampling_params import SamplingParams
from tests.unit.runner_driver import RunnerDriver, make_runner

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

PROMPTS = [[0, 266, 439, 462, 404, 429, 393, 267], [0, 42, 488, 81, 14], [0, 35]]
GREEDY = SamplingParams(temperature=0.0, min_tokens=8, max_tokens=8)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_float32_on_cuda_matches_transformers(request, fixture):
    model_dir = request.getfixturevalue(fixture)
    runner = make_runner(model_dir, device="cuda", dtype="float32", attention_backend="reference")
    driver = RunnerDriver(runner, capture_hidden=True)
    for i, prompt in enumerate(PROMPTS):
        driver.add(f"r{i}", prompt, GREEDY)
    driver.run(max_tokens=8, token_budget=5)
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    for req_id, by_position in driver.hidden.items():
        tokens = driver.requests[req_id].all_tokens[:len(by_position)]
        with torch.no_grad():
            logits = runner.model.compute_logits(torch.stack([by_position[p] for p in sorted(by_position)]))
            expected = hf(torch.tensor([tokens], device="cuda")).logits[0]
        torch.testing.assert_close(logits, expected, atol=2e-3, rtol=0)


def test_bf16_auto_profiles_memory_and_generates(tiny_llama_dir):
    runner = make_runner(tiny_llama_dir, num_kv_blocks=None, device="cuda", gpu_memory_utilization=0.1)
    assert runner.dtype == torch.bfloat16 and runner.kv_cache.dtype == torch.bfloat16
    assert runner.kv_cache.shape[2] > 1000  # most of an idle GPU goes to the cache
    driver = RunnerDriver(runner)
    for i, prompt in enumerate(PROMPTS):
        driver.add(f"r{i}", prompt, SamplingParams(temperature=0.8, top_p=0.9, seed=i, max_tokens=8))
    outputs = driver.run(max_tokens=8)
    assert all(len(o) == 8 for o in outputs.values())


def test_seeded_request_reproduces_on_cuda(tiny_qwen2_dir):
    def run(extra: int) -> list[int]:
        driver = RunnerDriver(make_runner(tiny_qwen2_dir, device="cuda", dtype="float32"))
        driver.add("seeded", PROMPTS[0], SamplingParams(temperature=1.0, seed=3, max_tokens=8))
        for i in range(extra):
            driver.add(f"x{i}", PROMPTS[1], SamplingParams(temperature=1.0))
        return driver.run(max_tokens=8)["seeded"]
    assert run(0) == run(2)
