"""Tensor parallelism on several GPUs (NCCL): greedy ids equal to TP=1, with CUDA graphs and without.

Needs as many GPUs as the largest TP size here; skipped otherwise.
"""
from __future__ import annotations

import multiprocessing

import pytest
import torch

from qinfer import LLM, SamplingParams

NUM_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(NUM_GPUS < 2, reason="needs 2 CUDA GPUs")]

PROMPTS = ["The quick brown fox", "Hello", "A small robot paints the quiet harbour while the night train waits."]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
ENGINE = dict(device="cuda", dtype="float32", num_kv_blocks=256, max_num_seqs=8)


def greedy_ids(model_dir, **kwargs):
    llm = LLM(str(model_dir), **ENGINE, **kwargs)
    try:
        return [o.outputs[0].token_ids for o in llm.generate(PROMPTS, GREEDY, use_tqdm=False)]
    finally:
        llm.engine.executor.close()


@pytest.mark.parametrize("enforce_eager", [False, True], ids=["cuda-graphs", "eager"])
@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_tp2_greedy_equals_tp1(request, fixture, enforce_eager):
    model_dir = request.getfixturevalue(fixture)
    expected = greedy_ids(model_dir, enforce_eager=enforce_eager)
    assert greedy_ids(model_dir, tensor_parallel_size=2, enforce_eager=enforce_eager) == expected
    assert not multiprocessing.active_children()
