"""SamplingMetadata: the sampling parameters of one step's sampling rows, as device tensors.

Built by the executor's InputBatch from the requests of a SchedulerOutput; read by the sampler.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class SamplingMetadata:
    """Per-row tensors [S] on the logits' device; None where every row has the neutral value."""

    temperature: torch.Tensor                          # [S] float; 0 = greedy
    all_greedy: bool
    all_random: bool = False                           # every temperature > 0 (False: not known)
    top_k: Optional[torch.Tensor] = None               # [S] long; vocab size = off
    top_p: Optional[torch.Tensor] = None               # [S] float; 1 = off
    min_p: Optional[torch.Tensor] = None               # [S] float; 0 = off
    repetition_penalty: Optional[torch.Tensor] = None  # [S]; penalties are all set together or all None
    presence_penalty: Optional[torch.Tensor] = None    # [S]
    frequency_penalty: Optional[torch.Tensor] = None   # [S]
    prompt_token_ids: Optional[torch.Tensor] = None    # [S, P] long, padded with vocab_size
    output_token_ids: Optional[torch.Tensor] = None    # [S, O] long, padded with vocab_size
    banned_token_ids: list[tuple[int, list[int]]] = field(default_factory=list)  # (row, ids) for min_tokens
    generators: dict[int, torch.Generator] = field(default_factory=dict)          # row -> seeded generator
    max_num_logprobs: Optional[int] = None             # largest k asked in the batch; None: nobody asked
