"""Gated activation of the MLP: silu(gate) * up over a fused [gate | up] input."""
from __future__ import annotations

import torch
from torch import nn

from qinfer import ops


class SiluAndMul(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [T, 2I] -> [T, I]."""
        return ops.silu_and_mul(x)
