"""CPU linear layers with each weight packed once, at load, for the CPU kernels that run it best:
float32 weights both in the 16-column tiles of csrc/cpu/linear.cpp (torch.ops.qinfer_cpu.linear_tiled,
for inputs of up to a row limit: decode steps) and by oneDNN (onednn_linear.py: more rows,
prefill); bfloat16 weights by oneDNN only (its AMX / AVX-512-BF16 kernels).

Up to the kernel's register block (16 rows with AVX-512, 6 with AVX2) the work is weight-read-bound
and the tiles read 1.3-1.8x faster than oneDNN. Past it the work turns compute-bound and which
kernel wins depends on the machine (bench/NOTES.md): on an AMD Zen 5 the tiles lead by 0-40% to
64 rows and tie at 128, on an AVX2 EPYC they tie or lead to 128, on an Intel Xeon oneDNN led by
10-40% from 48 rows. So the limit is measured, once per weight shape and process, when the first
weight of that shape is packed (`measured_max_rows`: ~0.8 s for SmolLM2-135M's five shapes). The
price of the two copies: twice the float32 weights' memory. Without the compiled CPU kernels
float32 goes to oneDNN alone; where neither packs (or the reference is forced) the layer keeps its
dense weight and ops.linear.
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from qinfer.ops import cpu_compiled, onednn_linear
from qinfer.ops.registry import forced_implementation

TILE = 16            # output columns per tile (csrc/cpu/linear.cpp kTile)
WEIGHT_BOUND_ROWS = 16           # up to here the tiles always serve: the weight reads dominate
CANDIDATE_ROWS = (32, 64, 128)   # the row limits measured past it
# (N, K) -> the measured row limit of the tiles for weights of that shape in this process.
_MAX_ROWS: dict[tuple[int, int], int] = {}


def _best_us(fn, calls: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return 1e6 * (time.perf_counter() - start) / calls


def _tiles_win(tiled, onednn, repeats: int = 5, span_us: float = 2000.0) -> bool:
    """Whether the tiles' best time is no worse than oneDNN's: after a warm-up call of each, their
    runs interleaved (a shared machine's slow spells hit both), each timing spanning ~span_us."""
    calls = max(1, int(span_us / max(_best_us(tiled), _best_us(onednn), 1.0)))
    best_tiled = best_onednn = float("inf")
    for _ in range(repeats):
        best_tiled = min(best_tiled, _best_us(tiled, calls))
        best_onednn = min(best_onednn, _best_us(onednn, calls))
    return best_tiled <= best_onednn


def measured_max_rows(tiles: torch.Tensor, onednn, out_features: int) -> int:
    """The most rows the tiles take for weights of this shape: WEIGHT_BOUND_ROWS, then each of
    CANDIDATE_ROWS while the tiles time no slower than oneDNN on it (_tiles_win, random inputs)."""
    key = (out_features, tiles.shape[1])
    if key not in _MAX_ROWS:
        limit = WEIGHT_BOUND_ROWS
        for rows in CANDIDATE_ROWS:
            x = torch.randn(rows, tiles.shape[1])
            if not _tiles_win(lambda: torch.ops.qinfer_cpu.linear_tiled(x, tiles, None, out_features),
                              lambda: onednn_linear.packed_linear(x, onednn, None)):
                break
            limit = rows
        _MAX_ROWS[key] = limit
    return _MAX_ROWS[key]


class PackedWeight:
    """A weight [N, K] in the layouts of the CPU kernels; calling it is x W^T (+ bias), x [..., K].
    Inputs of up to tiled_max_rows rows run on the tiles, more on oneDNN (where both hold a copy)."""

    def __init__(self, weight: torch.Tensor, batch_hint: int):
        self.out_features = weight.shape[0]
        self.tiles, self.tiled_max_rows = None, 0
        if weight.dtype == torch.float32 and cpu_compiled.available():
            # [N, K] -> [ceil(N / 16), K, 16], the last tile padded with zero columns
            padded = F.pad(weight.detach(), (0, 0, 0, -weight.shape[0] % TILE))
            self.tiles = padded.view(-1, TILE, weight.shape[1]).transpose(1, 2).contiguous()
        self.onednn = onednn_linear.pack(weight, batch_hint) if onednn_linear.packs(weight.dtype) else None
        if self.tiles is not None and self.onednn is not None:
            self.tiled_max_rows = measured_max_rows(self.tiles, self.onednn, self.out_features)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        if self.tiles is None or (self.onednn is not None and rows.shape[0] > self.tiled_max_rows):
            return onednn_linear.packed_linear(x, self.onednn, bias)
        out = torch.ops.qinfer_cpu.linear_tiled(rows if rows.stride(-1) == 1 else rows.contiguous(),
                                                self.tiles, bias, self.out_features)
        return out.view(*x.shape[:-1], self.out_features)


def can_pack(weight: torch.Tensor) -> bool:
    return (weight.device.type == "cpu" and weight.dim() == 2 and forced_implementation("linear") != "torch"
            and (onednn_linear.packs(weight.dtype) or (weight.dtype == torch.float32 and cpu_compiled.available())))
