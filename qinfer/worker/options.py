"""The worker's command-line flags, shared by `qinfer worker`, `python -m qinfer.worker` and
workers/gpu_worker.py: each flag overrides a QINFER_* setting or an EngineConfig field."""
from __future__ import annotations

import argparse

from qinfer.config import Settings, settings_from_args
from qinfer.contracts.engine_config import EngineConfig

ENGINE_FLAGS = ("max_num_seqs", "max_num_batched_tokens", "num_kv_blocks", "block_size", "max_model_len",
                "tensor_parallel_size", "dtype", "attention_backend", "async_scheduling", "gpu_memory_utilization")


def add_worker_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="Hugging Face model directory")
    p.add_argument("--served-model-name", dest="served_model_name", help="queue name (default: dir base name)")
    p.add_argument("--name", dest="worker_name", help="worker / consumer name (default: host-pid)")
    p.add_argument("--device", help="cpu | cuda | cuda:N")
    p.add_argument("--lease-seconds", dest="lease_seconds", type=float)
    p.add_argument("--max-attempts", dest="max_attempts", type=int)
    p.add_argument("--drain-grace-s", dest="drain_grace_s", type=float)
    p.add_argument("--metrics-port", dest="metrics_port", type=int)
    p.add_argument("--tp", "--tensor-parallel-size", dest="tensor_parallel_size", type=int,
                   help="tensor-parallel ranks: one process per GPU (cuda:0..N-1), or gloo ranks on the CPU")
    for flag, kind in [("max-num-seqs", int), ("max-num-batched-tokens", int), ("num-kv-blocks", int),
                       ("block-size", int), ("max-model-len", int), ("dtype", str), ("attention-backend", str)]:
        p.add_argument(f"--{flag}", type=kind, help="engine setting (see EngineConfig)")
    p.add_argument("--gpu-memory-utilization", type=float,
                   help="share of GPU memory the engine may use: weights, activations, KV cache (0.90)")
    p.add_argument("--async-scheduling", dest="async_scheduling", action=argparse.BooleanOptionalAction,
                   default=None, help="overlap scheduling and output processing with the GPU "
                   "(EngineConfig.async_scheduling; default: on for one GPU)")


def worker_configs(args: argparse.Namespace) -> tuple[Settings, EngineConfig]:
    """(settings, engine config) of a worker from its parsed flags and the QINFER_* environment."""
    settings = settings_from_args(args)
    engine_kwargs = {k: getattr(args, k) for k in ENGINE_FLAGS if getattr(args, k, None) is not None}
    return settings, EngineConfig(model=args.model, device=settings.device, **engine_kwargs)
