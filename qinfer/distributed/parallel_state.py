"""This process's place in its tensor-parallel group, and the process group behind it.

One TP group per worker, and it is the whole world: rank r of N drives device
r (cuda:r, or the CPU with gloo). The ModelRunner sets the place
(`set_tp_group`) before it builds the model; layers read it (`tp_rank()`,
`tp_size()`) when they are built. (0, 1) means no tensor parallelism and no
process group at all.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

# NVLink multicast (NVLS / symmetric memory) is off on the lent GPU machines; NCCL
# and torch read these when a communicator is created, so they are set before that
# in every process of a TP group (spawned ranks inherit them).
MULTICAST_OFF_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
                     "NVSHMEM_DISABLE_NVLS": "1"}
_STORE_HOST = "127.0.0.1"        # one host: ranks meet on loopback
_INIT_TIMEOUT = datetime.timedelta(minutes=5)

_TP_RANK, _TP_SIZE = 0, 1


def set_tp_group(rank: int, size: int) -> None:
    global _TP_RANK, _TP_SIZE
    _TP_RANK, _TP_SIZE = rank, size


def tp_rank() -> int:
    return _TP_RANK


def tp_size() -> int:
    return _TP_SIZE


def disable_multicast() -> None:
    os.environ.update(MULTICAST_OFF_ENV)


def rank_device(device_type: str, rank: int) -> torch.device:
    """The device rank `rank` computes on: cuda:rank, or the CPU."""
    return torch.device("cuda", rank) if device_type == "cuda" else torch.device("cpu")


def create_store(world_size: int) -> dist.TCPStore:
    """Rank 0's rendezvous store on a free port the OS picks (no port race); pass `.port` to the others."""
    return dist.TCPStore(_STORE_HOST, 0, world_size, is_master=True, timeout=_INIT_TIMEOUT,
                         wait_for_workers=False)


def init_tp_group(rank: int, world_size: int, device_type: str, store: dist.Store | None = None,
                  store_port: int | None = None) -> None:
    """Join the TP group: NCCL on cuda (one GPU per rank), gloo on the CPU."""
    disable_multicast()
    if store is None:
        store = dist.TCPStore(_STORE_HOST, store_port, world_size, is_master=False, timeout=_INIT_TIMEOUT)
    if device_type == "cuda":
        torch.cuda.set_device(rank)
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend, store=store, rank=rank, world_size=world_size, timeout=_INIT_TIMEOUT)


def destroy_tp_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    set_tp_group(0, 1)
