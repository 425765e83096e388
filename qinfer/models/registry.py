"""Hugging Face architecture name (config.architectures[0]) -> model class."""
from __future__ import annotations

import importlib

from torch import nn

# architecture -> "module:Class", imported on first use
_MODELS = {
    "LlamaForCausalLM": "qinfer.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "qinfer.models.mistral:MistralForCausalLM",
    "MixtralForCausalLM": "qinfer.models.mixtral:MixtralForCausalLM",
    "Phi3ForCausalLM": "qinfer.models.phi3:Phi3ForCausalLM",
    "Qwen2ForCausalLM": "qinfer.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "qinfer.models.qwen3:Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM": "qinfer.models.qwen3_moe:Qwen3MoeForCausalLM",
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(hf_config) -> type[nn.Module]:
    """The class implementing the config's architecture; ValueError naming the supported ones."""
    architectures = getattr(hf_config, "architectures", None) or []
    for arch in architectures:
        if arch in _MODELS:
            module, cls = _MODELS[arch].split(":")
            return getattr(importlib.import_module(module), cls)
    raise ValueError(f"unsupported model architecture {architectures or '(none in config.json)'}; "
                     f"supported: {', '.join(supported_architectures())}")
