"""Qwen2 for causal LM: Llama's architecture with biases on q, k and v (none on o)."""
from __future__ import annotations

from qinfer.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_biases(config) -> tuple[bool, bool]:
        return True, False
