"""Batch settings left None are sized to the device by vLLM's rule; explicit values win."""
from __future__ import annotations

import pytest

from qinfer.contracts.engine_config import EngineConfig
from qinfer.engine.device_defaults import BatchDefaults, gpu_batch_defaults, sized_to_device

GIB = 2**30


@pytest.mark.parametrize("total_gib,name,expected", [
    (141, "NVIDIA H200", (1024, 16384)), (80, "NVIDIA H100 80GB HBM3", (1024, 16384)),
    (80, "NVIDIA A100-SXM4-80GB", (256, 8192)), (24, "NVIDIA L4", (256, 8192)),
    (69.9, "NVIDIA H100 NVL slice", (256, 8192)),
])
def test_gpu_rule(total_gib, name, expected):
    assert gpu_batch_defaults(int(total_gib * GIB), name) == BatchDefaults(*expected)


def test_cpu_defaults_scale_with_ranks_and_explicit_values_win():
    assert sized_to_device(EngineConfig(model="m")).max_num_seqs == 256
    assert sized_to_device(EngineConfig(model="m", tensor_parallel_size=2)).max_num_batched_tokens == 8192
    explicit = sized_to_device(EngineConfig(model="m", max_num_seqs=7, max_num_batched_tokens=64))
    assert (explicit.max_num_seqs, explicit.max_num_batched_tokens) == (7, 64)


def test_max_num_seqs_never_exceeds_the_token_budget():
    config = sized_to_device(EngineConfig(model="m", max_num_batched_tokens=100))
    assert (config.max_num_seqs, config.max_num_batched_tokens) == (100, 100)
