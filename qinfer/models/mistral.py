"""Mistral for causal LM: Llama's modules; `sliding_window` in the config (Mistral-7B v0.1: 4096)
windows every attention layer (LlamaAttention reads it through sliding_window_of), and the
block manager frees the blocks behind the window."""
from __future__ import annotations

from qinfer.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    pass
