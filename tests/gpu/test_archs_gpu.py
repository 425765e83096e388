"""Qwen3, Mistral (sliding window) and Phi-3 (fused checkpoint, LongRoPE) on a GPU: float32
greedy tokens of the engine (Triton attention, CUDA graphs for decode) equal transformers'.

Run on the device machine: `python -m pytest -m gpu --noconftest tests/gpu/test_archs_gpu.py`.
"""
from __future__ import annotations

import pytest
import torch

from qinfer.testing.tiny_model import make_tiny_model

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

SHAPES = {
    # head_dim 64: a width the compiled per-head norm + rotary kernel takes (64, 128, 256)
    "qwen3": dict(hidden_size=64, num_heads=4, num_kv_heads=2, head_dim=64, tie_word_embeddings=True),
    "mistral": dict(hidden_size=64, num_heads=4, num_kv_heads=1, sliding_window=8),
    "phi3": dict(hidden_size=64, num_heads=4, num_kv_heads=2, rope_scaling="longrope",
                 original_max_position_embeddings=2, sliding_window=6),
}
PROMPTS = ["The quick brown fox jumps over the lazy dog and the night train waits.", "Hello",
           "Once upon a time, in a city of glass and rain, people wrote letters to machines."]


@pytest.mark.parametrize("arch", list(SHAPES))
def test_float32_greedy_equals_transformers(tmp_path, arch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qinfer import LLM, SamplingParams

    model_dir = make_tiny_model(tmp_path / arch, arch, num_layers=2, intermediate_size=128, **SHAPES[arch])
    ids = [AutoTokenizer.from_pretrained(model_dir)(p).input_ids for p in PROMPTS]
    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    expected = []
    for prompt in ids:
        x = torch.tensor([prompt], device="cuda")
        out = hf.generate(x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=16,
                          min_new_tokens=16, pad_token_id=0)
        expected.append(out[0, len(prompt):].tolist())
    llm = LLM(str(model_dir), device="cuda", dtype="float32", max_num_seqs=4, block_size=4,
              num_kv_blocks=64, max_num_batched_tokens=8)
    assert llm.engine.executor.runner.attn_backend.name == "triton"
    outputs = llm.generate(ids, SamplingParams(temperature=0.0, max_tokens=16, min_tokens=16), use_tqdm=False)
    assert [o.outputs[0].token_ids for o in outputs] == expected
