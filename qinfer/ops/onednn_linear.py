"""CPU linears through oneDNN with each weight packed once, at load.

F.linear on the CPU (MKL) re-packs the weight into its blocked layout in every call; for
the small row counts of decode steps that repacking costs as much as the product. oneDNN
keeps a packed copy instead (what torch.compile's CPU "freezing" does): SmolLM2-135M's
layers run 1.5-3x faster in float32 on a 2-core AVX-512 machine (bench/bench_cpu_vs_hf.py),
with results within float rounding of F.linear (the reference, ops.linear).

Only where oneDNN is built into torch, for float32 / bfloat16 CPU weights, and not when the
reference is forced (QINFER_OPS_IMPL=torch or use_implementation("linear", "torch")).
"""
from __future__ import annotations

from typing import Optional

import torch

from qinfer.ops.registry import forced_implementation

PACKED_DTYPES = (torch.float32, torch.bfloat16)


def can_pack(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dtype in PACKED_DTYPES and weight.dim() == 2
            and torch.backends.mkldnn.is_available() and forced_implementation("linear") in (None, "onednn"))


def pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """weight [N, K] -> an opaque oneDNN tensor for packed_linear; batch_hint: the typical row
    count of the inputs (any count works)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] -> [..., N]: x W^T (+ bias), as ops.linear with the unpacked weight."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
