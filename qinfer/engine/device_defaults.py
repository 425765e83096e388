"""Engine settings left None ("sized to the device"), resolved here and nowhere else.

max_num_seqs and max_num_batched_tokens follow vLLM's rule for its offline LLM class
(EngineArgs.get_batch_defaults): on a GPU of at least 70 GiB that is not an A100
(H100, H200, MI300x: large steps pay off) 1,024 sequences and 16,384 batched tokens; on
other GPUs 256 and 8,192; on the CPU 256 and 4,096 per tensor-parallel rank. As in vLLM,
max_num_seqs is never above max_num_batched_tokens. A value the user set always wins.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

from qinfer.contracts.engine_config import EngineConfig

LARGE_GPU_BYTES = 70 * 2**30


class BatchDefaults(NamedTuple):
    max_num_seqs: int
    max_num_batched_tokens: int


def batch_defaults(device: str, tensor_parallel_size: int = 1) -> BatchDefaults:
    if not device.startswith("cuda"):
        return BatchDefaults(256 * tensor_parallel_size, 4096 * tensor_parallel_size)
    import torch

    try:
        props = torch.cuda.get_device_properties(torch.device(device))
    except (AssertionError, RuntimeError, ValueError):
        # no such GPU here: the executor says so in its own words; until then, vLLM's fallback
        return gpu_batch_defaults(0, "")
    return gpu_batch_defaults(props.total_memory, props.name)


def gpu_batch_defaults(total_memory: int, name: str) -> BatchDefaults:
    # vLLM measured large budgets to lower an A100's throughput (its PR #17885), hence the name test
    if total_memory >= LARGE_GPU_BYTES and "a100" not in name.lower():
        return BatchDefaults(1024, 16384)
    return BatchDefaults(256, 8192)


def sized_to_device(config: EngineConfig) -> EngineConfig:
    """config with every None batch setting filled in for its device."""
    if config.max_num_seqs is not None and config.max_num_batched_tokens is not None:
        return config
    defaults = batch_defaults(config.device, config.tensor_parallel_size)
    max_num_batched_tokens = config.max_num_batched_tokens or defaults.max_num_batched_tokens
    max_num_seqs = config.max_num_seqs or min(defaults.max_num_seqs, max_num_batched_tokens)
    return dataclasses.replace(config, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
