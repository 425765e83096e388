"""CPU linears through oneDNN with each weight packed once, at load.

F.linear on the CPU (MKL) brings the weight into its blocked layout in every call; oneDNN
with the weight reordered once (what torch.compile's CPU "freezing" does) ran SmolLM2-135M's
layer shapes 1.5-3x faster in float32 on a 2-core AVX-512 machine (16-64 rows; the LM head
at 16 rows 7.9 vs 24.5 ms), with results within float rounding of F.linear (the reference,
ops.linear). End to end: bench/bench_cpu_vs_hf.py.

Only where oneDNN is built into torch, for float32 / bfloat16 CPU weights (bfloat16 where the
CPU supports it: `packs`). cpu_linear.py decides which layers pack (none when the reference is
forced: QINFER_OPS_IMPL=torch or use_implementation("linear", "torch")).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch


PACKED_DTYPES = (torch.float32, torch.bfloat16)


@functools.cache
def packs(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN packs weights of dtype: bfloat16 needs AVX-512 (bw, vl, dq) or
    AVX-NE-CONVERT (oneDNN refuses it on an AVX2-only CPU), so ask it once with a tiny weight."""
    if dtype not in PACKED_DTYPES or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(16, 16, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


def pack(weight: torch.Tensor, batch_hint: int) -> torch.Tensor:
    """weight [N, K] -> an opaque oneDNN tensor for packed_linear; batch_hint: the typical row
    count of the inputs (any count works)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), batch_hint)


def packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [..., K] -> [..., N]: x W^T (+ bias), as ops.linear with the unpacked weight."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
