"""The model registry: Hugging Face architecture names to qinfer classes, clear errors otherwise."""
import pytest
from transformers import MistralConfig, Phi3Config

from qinfer.layers.rotary import RotaryEmbedding, rope_parameters
from qinfer.models.registry import get_model_class, supported_architectures

ARCHITECTURES = ["LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Phi3ForCausalLM",
                 "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Qwen3MoeForCausalLM"]


def test_every_architecture_resolves_to_its_class():
    assert supported_architectures() == ARCHITECTURES
    for name in ARCHITECTURES:
        assert get_model_class(MistralConfig(architectures=[name])).__name__ == name


def test_unknown_architecture_names_the_supported_ones():
    with pytest.raises(ValueError) as error:
        get_model_class(MistralConfig(architectures=["GPT2LMHeadModel"]))
    message = str(error.value)
    assert "GPT2LMHeadModel" in message and all(name in message for name in ARCHITECTURES)
    with pytest.raises(ValueError, match=r"\(none in config.json\)"):
        get_model_class(MistralConfig(architectures=None))


def test_partial_rotary_is_refused_clearly():
    config = Phi3Config(hidden_size=64, num_attention_heads=4, rope_parameters={
        "rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.75})
    with pytest.raises(ValueError, match="partial_rotary_factor=0.75"):
        RotaryEmbedding(16, 32, rope_parameters(config))
