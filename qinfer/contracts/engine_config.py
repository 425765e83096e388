"""EngineConfig: every knob of one in-process engine (the LLM() keyword arguments)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from qinfer.errors import EngineConfigError

DTYPES = ("auto", "float32", "bfloat16", "float16")
# "org/name" of the Hugging Face hub: a string a user may pass hoping it downloads
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


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


def check_engine_config(config: EngineConfig) -> None:
    """EngineConfigError, before anything loads, for a model directory, device or dtype
    that cannot work here (LLMEngine calls it first, so LLM(...) and the worker both do)."""
    check_model_dir(config.model)
    if config.dtype not in DTYPES:
        raise EngineConfigError(f"unknown dtype {config.dtype!r}: use one of {', '.join(DTYPES)}")
    check_device(config.device, config.tensor_parallel_size)


def check_model_dir(model: str) -> None:
    path = Path(model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EngineConfigError(f"{model!r} is not a Hugging Face model directory: it has no config.json")
        return
    if path.exists():
        raise EngineConfigError(f"{model!r} is a file; pass the model's directory (with config.json)")
    if _HUB_ID.match(model):
        raise EngineConfigError(f"no directory {model!r} here; qinfer downloads nothing: if it is a Hugging "
                                f"Face hub id, download it first (e.g. `hf download {model} --local-dir DIR`) "
                                "and pass DIR")
    raise EngineConfigError(f"model directory {model!r} does not exist")


def check_device(device: str, tensor_parallel_size: int = 1) -> None:
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise EngineConfigError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    # tensor parallelism counts its devices itself (distributed/validation.py), rank by rank
    if kind == "cuda" and tensor_parallel_size == 1:
        import torch    # only here: the other checks stay light

        num_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if int(index or 0) >= num_gpus:
            found = f"{num_gpus} CUDA device(s)" if num_gpus else "no CUDA device (a CPU-only torch build?)"
            raise EngineConfigError(f"device {device!r}: torch sees {found}; "
                                    "use device cpu, or a CUDA build of torch on a GPU host")
