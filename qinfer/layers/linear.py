"""Linear layers whose parameters carry their own `weight_loader` (nano-vllm style).

Every layer knows its tensor-parallel place (tp_rank, tp_size), taken from
`qinfer.distributed.parallel_state` when not given: (0, 1) until a TP executor
joins a group. Column-parallel layers keep a slice of the output rows,
row-parallel ones a slice of the input columns and all-reduce their output;
with tp_size == 1 all of them are plain linears, so model files never change
for TP.

A loader gets the checkpoint tensor unread (weight_loader.CheckpointTensor, or
any torch.Tensor) and indexes out only the part its parameter holds.
"""
from __future__ import annotations

import torch
from torch import nn

from qinfer import ops
from qinfer.ops import cpu_linear

from qinfer.distributed.communication import tp_all_reduce
from qinfer.distributed.parallel_state import tp_rank as current_tp_rank
from qinfer.distributed.parallel_state import tp_size as current_tp_size


def narrow_read(loaded_weight, dim: int, start: int, size: int) -> torch.Tensor:
    """loaded_weight[start:start + size] along `dim`; only that part is read."""
    return loaded_weight[(slice(None),) * dim + (slice(start, start + size),)]


class RowsOf:
    """Rows [start, start + size) of a checkpoint tensor, still unread: indexing it (slices
    only, like a CheckpointTensor) reads just what it names. A fused checkpoint tensor
    (Phi-3's qkv_proj) is cut into its parts this way without reading it whole."""

    def __init__(self, loaded_weight, start: int, size: int):
        self._weight, self._start = loaded_weight, start
        self.shape = torch.Size([size, *loaded_weight.shape[1:]])

    def __getitem__(self, index) -> torch.Tensor:
        rows, *rest = index if isinstance(index, tuple) else (index,)
        first, end, step = rows.indices(self.shape[0])
        assert step == 1, "RowsOf takes slices without a step"
        return self._weight[(slice(self._start + first, self._start + end), *rest)]


def default_weight_loader(param: nn.Parameter, loaded_weight) -> None:
    param.data.copy_(loaded_weight[:])


class LinearBase(nn.Module):
    """y = x W^T (+ b); `tp_dim` is the weight dim split across ranks (None: replicated)."""

    tp_dim: int | None = None
    packed_weight: cpu_linear.PackedWeight | None = None   # pack_for_cpu(): the weight in a CPU kernel's layout

    def __init__(self, input_size: int, output_size: int, bias: bool = False,
                 tp_rank: int | None = None, tp_size: int | None = None):
        super().__init__()
        self.tp_rank = current_tp_rank() if tp_rank is None else tp_rank
        self.tp_size = current_tp_size() if tp_size is None else tp_size
        self.weight = nn.Parameter(torch.empty(output_size, input_size))
        self.weight.weight_loader = self.weight_loader
        self.bias = nn.Parameter(torch.empty(output_size)) if bias else None
        if bias:
            self.bias.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight) -> None:
        param.data.copy_(self._local_shard(param, loaded_weight))

    def _local_shard(self, param: nn.Parameter, loaded_weight) -> torch.Tensor:
        """This rank's slice of a full checkpoint tensor (a bias is split only on dim 0)."""
        if self.tp_dim is None or self.tp_size == 1 or (param.dim() == 1 and self.tp_dim == 1):
            return loaded_weight[:]
        shard = param.shape[self.tp_dim]
        return narrow_read(loaded_weight, self.tp_dim, self.tp_rank * shard, shard)

    def pack_for_cpu(self, batch_hint: int) -> bool:
        """Keep the weight packed for a CPU kernel (ops/cpu_linear.py) where that applies, and free
        the dense copy (only the packed one is read from here on). True if packed."""
        if self.packed_weight is not None or not cpu_linear.can_pack(self.weight):
            return self.packed_weight is not None
        self.packed_weight = cpu_linear.PackedWeight(self.weight, batch_hint)
        self.weight.data = torch.empty(0, dtype=self.weight.dtype)
        return True

    def matmul(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return dense_or_packed_linear(x, self.weight, self.packed_weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)


def dense_or_packed_linear(x: torch.Tensor, weight: torch.Tensor, packed: cpu_linear.PackedWeight | None,
                           bias: torch.Tensor | None = None) -> torch.Tensor:
    """x W^T (+ b) from the packed weight where the layer holds one, else ops.linear."""
    if packed is not None:
        return packed(x, bias)
    return ops.linear(x, weight, bias)


def pack_linears_for_cpu(model: nn.Module, batch_hint: int) -> int:
    """pack_for_cpu() every layer of `model` that has it (after its weights are loaded); the number packed."""
    return sum(m.pack_for_cpu(batch_hint) for m in model.modules() if hasattr(m, "pack_for_cpu"))


def _tp_size_of(tp: dict) -> int:
    return tp.get("tp_size") or current_tp_size()


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; the output stays split."""

    tp_dim = 0

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **tp):
        super().__init__(input_size, output_size // _tp_size_of(tp), bias, **tp)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column linears fused into one matmul, e.g. gate_up_proj = [gate; up].

    Most checkpoints store them apart; shard_id (0, 1, ...) says which one is loaded. A
    checkpoint that stores them fused (Phi-3) loads with no shard_id: it is cut into its parts.
    Each rank's fused weight is [its slice of gate; its slice of up].
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False, **tp):
        self.output_sizes = output_sizes
        super().__init__(input_size, sum(output_sizes), bias, **tp)

    def checkpoint_parts(self) -> list[tuple[object, int]]:
        """(shard_id, rows in a fused checkpoint tensor) of each part, in order."""
        return list(enumerate(self.output_sizes))

    def _load_fused(self, param: nn.Parameter, loaded_weight) -> None:
        start = 0
        for shard_id, num_rows in self.checkpoint_parts():
            self.weight_loader(param, RowsOf(loaded_weight, start, num_rows), shard_id)
            start += num_rows

    def _shard_offset_size(self, shard_id) -> tuple[int, int]:
        """(offset, size) of sub-matrix shard_id in this rank's fused weight rows."""
        local = [size // self.tp_size for size in self.output_sizes]
        return sum(local[:shard_id]), local[shard_id]

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            return self._load_fused(param, loaded_weight)
        offset, size = self._shard_offset_size(shard_id)
        param.data.narrow(0, offset, size).copy_(narrow_read(loaded_weight, 0, self.tp_rank * size, size))

    def silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up of a [gate; up] layer's output (the MLP's activation; two parts of one
        size), in one op: at one row on the GPU a single GEMV launch (ops.linear_silu_and_mul)."""
        if self.packed_weight is not None:
            return ops.silu_and_mul(self.matmul(x, self.bias))
        return ops.linear_silu_and_mul(x, self.weight, self.bias)


class QKVParallelLinear(MergedColumnParallelLinear):
    """q, k and v projections fused; shard_id is "q", "k" or "v". Each rank holds whole heads.

    With more ranks than kv heads, kv heads are replicated: ranks r with the same
    r // (tp_size / num_kv_heads) hold the same kv head (the one their q heads use).
    """

    def __init__(self, hidden_size: int, head_size: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, **tp):
        tp_size = _tp_size_of(tp)
        self.num_kv_head_replicas = max(1, tp_size // num_kv_heads)
        self.checkpoint_sizes = [num_heads * head_size, num_kv_heads * head_size, num_kv_heads * head_size]
        kv_size = max(num_kv_heads, tp_size) * head_size   # as if the replicas were in the checkpoint
        super().__init__(hidden_size, [num_heads * head_size, kv_size, kv_size], bias, **tp)

    def checkpoint_parts(self) -> list[tuple[object, int]]:
        return list(zip("qkv", self.checkpoint_sizes))

    def _shard_offset_size(self, shard_id) -> tuple[int, int]:
        return super()._shard_offset_size("qkv".index(shard_id))

    def weight_loader(self, param: nn.Parameter, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            return self._load_fused(param, loaded_weight)
        offset, size = self._shard_offset_size(shard_id)
        rank = self.tp_rank if shard_id == "q" else self.tp_rank // self.num_kv_head_replicas
        param.data.narrow(0, offset, size).copy_(narrow_read(loaded_weight, 0, rank * size, size))


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed (all-reduce)."""

    tp_dim = 1

    def __init__(self, input_size: int, output_size: int, bias: bool = False, **tp):
        super().__init__(input_size // _tp_size_of(tp), output_size, bias, **tp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The bias is added once, after the reduction, not once per rank.
        y = self.matmul(x)
        if self.tp_size > 1:
            tp_all_reduce(y)
        return y + self.bias if self.bias is not None else y
