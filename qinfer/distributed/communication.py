"""The collectives of the tensor-parallel layers; each is a no-op at tp_size 1.

They run on the default process group (the TP group is the whole world) and on
the current stream, so with NCCL they can be captured in a CUDA graph.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist

from qinfer.distributed.parallel_state import tp_rank, tp_size

DRIVER_RANK = 0   # the rank that samples (and schedules)


def tp_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over the ranks, in place."""
    if tp_size() > 1:
        dist.all_reduce(x)
    return x


def tp_gather_to_driver(x: torch.Tensor, dim: int = -1) -> Optional[torch.Tensor]:
    """Every rank's x concatenated along `dim` on the driver rank; None on the others."""
    if tp_size() == 1:
        return x
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(tp_size())] if tp_rank() == DRIVER_RANK else None
    dist.gather(x, parts, dst=DRIVER_RANK)
    return torch.cat(parts, dim=dim) if parts is not None else None
