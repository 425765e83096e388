"""Token embedding and LM head, split over the vocabulary for tensor parallelism.

Rank r holds rows [r * V/tp, (r + 1) * V/tp) of the vocabulary padded up to a
multiple of tp (pad rows are zero); with tp_size == 1 these are a plain
embedding and a plain linear head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from qinfer.distributed.communication import tp_all_reduce, tp_gather_to_driver
from qinfer.distributed.parallel_state import tp_rank, tp_size
from qinfer.layers.linear import dense_or_packed_linear, narrow_read
from qinfer.ops import cpu_linear


class VocabEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.tp_rank, self.tp_size = tp_rank(), tp_size()
        self.num_embeddings = num_embeddings
        self.num_local = -(-num_embeddings // self.tp_size)
        self.vocab_start = self.tp_rank * self.num_local
        self.weight = nn.Parameter(torch.empty(self.num_local, embedding_dim))
        self.weight.weight_loader = self.weight_loader

    def weight_loader(self, param: nn.Parameter, loaded_weight) -> None:
        num_real = max(0, min(self.num_local, self.num_embeddings - self.vocab_start))
        if num_real:
            param.data[:num_real].copy_(narrow_read(loaded_weight, 0, self.vocab_start, num_real))
        param.data[num_real:].zero_()   # pad rows: never looked up, logits dropped, but never NaN

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids [T] -> [T, H]; each rank embeds its ids, zeros for the others, summed over ranks."""
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local_ids = input_ids - self.vocab_start
        is_local = (local_ids >= 0) & (local_ids < self.num_local)
        out = F.embedding(local_ids.clamp(0, self.num_local - 1), self.weight)
        return tp_all_reduce(out.masked_fill_(~is_local.unsqueeze(-1), 0))


class LMHead(VocabEmbedding):
    """hidden [N, H] -> logits [N, V]; tied to the embedding by sharing its `weight`.

    Under TP the vocab shards are gathered on the driver rank only (it alone
    samples); the other ranks get None.
    """

    packed_weight: cpu_linear.PackedWeight | None = None

    def pack_for_cpu(self, batch_hint: int) -> bool:
        """A packed copy of the weight for a CPU kernel (ops/cpu_linear.py); the dense one stays,
        since the embedding may share it. True if packed."""
        if self.packed_weight is None and cpu_linear.can_pack(self.weight):
            self.packed_weight = cpu_linear.PackedWeight(self.weight, batch_hint)
        return self.packed_weight is not None

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = tp_gather_to_driver(dense_or_packed_linear(hidden, self.weight, self.packed_weight), dim=-1)
        return None if logits is None else logits[:, :self.num_embeddings]
