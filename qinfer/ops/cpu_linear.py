"""CPU linear layers with each weight packed once, at load, for the CPU kernels that run it best:
float32 weights both in the 16-column tiles of csrc/cpu/linear.cpp (torch.ops.qinfer_cpu.linear_tiled,
for inputs of up to tiled_max_rows() rows: decode steps) and by oneDNN (onednn_linear.py: more rows,
prefill); bfloat16 weights by oneDNN only (its AMX / AVX-512-BF16 kernels).

On a 2-core Xeon (AVX-512), SmolLM2-135M's shapes, float32, 16 rows: the tiles read the weights at
13-18 GB/s against oneDNN's 9-12 (the machine reads 19.6 GB/s); from ~48 rows on the work is
compute-bound and oneDNN's kernels are 10-40% faster there, while on an AVX2 machine the tiles
keep up to 128 rows (tiled_max_rows; bench/NOTES.md). The price of the two copies:
twice the float32 weights' memory. Without the compiled CPU kernels float32 goes to oneDNN alone;
where neither packs (or the reference is forced) the layer keeps its dense weight and ops.linear.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qinfer.ops import cpu_compiled, onednn_linear
from qinfer.ops.registry import forced_implementation

TILE = 16            # output columns per tile (csrc/cpu/linear.cpp kTile)


def tiled_max_rows() -> int:
    """Inputs of more rows go to oneDNN where it holds a copy. By the kernel's register block
    (bench/NOTES.md): 16 rows (AVX-512) are load-bound past 32 rows, where oneDNN is 10-40% faster
    from 48; 6 rows (AVX2) tie or beat oneDNN up to 128 rows (10-20% behind it from 256)."""
    return 32 if torch.ops.qinfer_cpu.linear_tiled_row_block() >= 16 else 128


class PackedWeight:
    """A weight [N, K] in the layouts of the CPU kernels; calling it is x W^T (+ bias), x [..., K]."""

    def __init__(self, weight: torch.Tensor, batch_hint: int):
        self.out_features = weight.shape[0]
        self.tiles, self.tiled_max_rows = None, 0
        if weight.dtype == torch.float32 and cpu_compiled.available():
            self.tiled_max_rows = tiled_max_rows()
            # [N, K] -> [ceil(N / 16), K, 16], the last tile padded with zero columns
            padded = F.pad(weight.detach(), (0, 0, 0, -weight.shape[0] % TILE))
            self.tiles = padded.view(-1, TILE, weight.shape[1]).transpose(1, 2).contiguous()
        self.onednn = onednn_linear.pack(weight, batch_hint) if onednn_linear.packs(weight.dtype) else None

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.tiles is None or (rows.shape[0] > self.tiled_max_rows and self.onednn is not None):
            return onednn_linear.packed_linear(x, self.onednn, bias)
        out = torch.ops.qinfer_cpu.linear_tiled(rows if rows.stride(-1) == 1 else rows.contiguous(),
                                                self.tiles, bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


def can_pack(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dim() == 2 and forced_implementation("linear") != "torch"
            and (onednn_linear.packs(weight.dtype) or (weight.dtype == torch.float32 and cpu_compiled.available())))
