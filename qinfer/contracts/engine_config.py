"""EngineConfig: every knob of one in-process engine (the LLM() keyword arguments)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class EngineConfig:
    model: str                                  # Hugging Face model directory
    device: str = "cpu"                         # "cpu" | "cuda" | "cuda:N"
    dtype: str = "auto"                         # "auto" (bf16 on cuda, fp32 on cpu) | float32 | bfloat16 | float16
    # None: sized to the device (engine/device_defaults.py: 1,024 / 16,384 on a GPU of >= 70 GiB)
    max_num_seqs: Optional[int] = None          # sequences in the running batch at most
    max_num_batched_tokens: Optional[int] = None  # token budget of one step (chunked prefill above it)
    block_size: int = 16                        # tokens per KV block
    num_kv_blocks: Optional[int] = None         # None: sized from memory (gpu_memory_utilization / cpu_kv_cache_gb)
    enable_prefix_caching: bool = True
    seed: int = 0                               # seeds requests that give no seed of their own
    max_model_len: Optional[int] = None         # None: the model's max_position_embeddings
    gpu_memory_utilization: float = 0.90        # share of GPU memory for weights + activations + KV cache
    cpu_kv_cache_gb: float = 1.0                # KV cache size on the CPU when num_kv_blocks is None
    tensor_parallel_size: int = 1
    enforce_eager: bool = False                 # True: no CUDA graphs
    # Steps that mix prefill chunks with decodes and have at most this many tokens run from CUDA
    # graphs (token-count buckets); larger ones run eagerly. None: 512 (capped at
    # max_num_batched_tokens); 0: graphs for decode-only steps only.
    max_cudagraph_tokens: Optional[int] = None
    attention_backend: Optional[str] = None     # None: best available ("triton" on cuda, "sdpa" elsewhere); "reference": the per-request oracle
    # True: step N+1 is scheduled and launched before step N's sampled ids reach the host, so the
    # scheduling, stop checks and detokenization overlap the device; step() then returns the outputs
    # of the previous step. Same tokens as False for greedy and seeded requests. Only with
    # tensor_parallel_size 1 (with more ranks the engine runs synchronously and logs a warning).
    # None: on for one CUDA GPU (there the host work would otherwise idle the GPU), off elsewhere.
    async_scheduling: Optional[bool] = None
