"""Phi-3 for causal LM: Llama's modules, loaded from fused checkpoints.

- qkv_proj and gate_up_proj are stored fused; they load straight into the fused
  parameters, each part into its slot (QKVParallelLinear / MergedColumnParallelLinear
  split a tensor given without a shard id), so tensor parallelism shards them too.
- rope_scaling "longrope" (Phi-3-mini-128k, Phi-3.5): layers.rotary.longrope_inv_freq.
- `sliding_window` (Phi-3-mini-4k: 2047) windows every layer, as for Mistral.
"""
from __future__ import annotations

from qinfer.models.llama import LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    pass
