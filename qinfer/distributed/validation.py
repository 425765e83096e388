"""Clear errors, before any process starts, for a tensor-parallel size the model or machine cannot take."""
from __future__ import annotations

import torch


def validate_tensor_parallel(hf_config, tp_size: int, device: str) -> None:
    """ValueError saying what to change when `tp_size` does not fit the model's heads or the devices."""
    if not isinstance(tp_size, int) or tp_size < 1:
        raise ValueError(f"tensor_parallel_size must be a positive integer, got {tp_size!r}")
    if tp_size == 1:
        return
    _check_heads(hf_config, tp_size)
    _check_divides(hf_config.intermediate_size, tp_size, "intermediate_size (MLP width)")
    moe_width = getattr(hf_config, "moe_intermediate_size", None)   # Qwen3-MoE's experts (Mixtral's: the above)
    if moe_width:
        _check_divides(moe_width, tp_size, "moe_intermediate_size (expert MLP width)")
    _check_devices(device, tp_size)


def _check_heads(hf_config, tp_size: int) -> None:
    num_heads = hf_config.num_attention_heads
    num_kv_heads = getattr(hf_config, "num_key_value_heads", None) or num_heads
    _check_divides(num_heads, tp_size, "num_attention_heads")
    # Each rank holds whole kv heads: split them (kv % tp == 0) or replicate them (tp % kv == 0).
    if num_kv_heads % tp_size and tp_size % num_kv_heads:
        raise ValueError(f"tensor_parallel_size={tp_size} does not fit the model's num_key_value_heads="
                         f"{num_kv_heads}: one must divide the other (kv heads are split across ranks, "
                         "or replicated when there are fewer kv heads than ranks)")


def _check_divides(size: int, tp_size: int, what: str) -> None:
    if size % tp_size:
        raise ValueError(f"tensor_parallel_size={tp_size} does not divide the model's {what}={size}; "
                         f"use a tensor_parallel_size that divides {size}")


def _check_devices(device: str, tp_size: int) -> None:
    device = torch.device(device)
    if device.type == "cpu":
        return
    if device.type != "cuda" or device.index not in (None, 0):
        raise ValueError(f"tensor parallelism runs on device 'cuda' (ranks take cuda:0..{tp_size - 1}) "
                         f"or 'cpu', not {str(device)!r}")
    num_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if num_devices < tp_size:
        raise ValueError(f"tensor_parallel_size={tp_size} needs {tp_size} CUDA devices, "
                         f"this machine has {num_devices}")
