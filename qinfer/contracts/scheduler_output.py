"""The plan of one engine step, handed from the scheduler to the model runner.

Contract between scheduler (engine/) and runner (executor/), in the style of
vLLM v1: the runner keeps a persistent batch keyed by request id, so a step
carries full data only for requests the runner has not seen (new, or resumed
after preemption) and only the delta for the others. The same object is what
rank 0 broadcasts to the other tensor-parallel ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from qinfer.sampling_params import SamplingParams


@dataclass
class NewRequestData:
    """A request the runner must (re)create: first schedule, or resume after preemption."""

    req_id: str
    # Every token the runner must know: prompt followed by output tokens generated
    # before a preemption (empty output for a fresh request).
    prompt_token_ids: list[int]
    output_token_ids: list[int]
    sampling_params: SamplingParams
    block_ids: list[int]          # the request's whole block table
    num_computed_tokens: int      # tokens whose KV is already in the cache (prefix hits)


@dataclass(slots=True)   # one per running request per step
class CachedRequestData:
    """A request the runner already holds; only what changed since the last step."""

    req_id: str
    new_block_ids: Sequence[int]  # appended to the request's block table (often an empty tuple)
    num_computed_tokens: int      # tokens whose KV is in the cache before this step


@dataclass
class SchedulerOutput:
    new_requests: list[NewRequestData] = field(default_factory=list)
    cached_requests: list[CachedRequestData] = field(default_factory=list)
    # req_id -> number of tokens to compute this step (prefill chunk or 1 for decode).
    num_scheduled_tokens: dict[str, int] = field(default_factory=dict)
    # Requests the runner must forget before this step: finished, aborted or preempted.
    # (A preempted request comes back later as a NewRequestData.)
    finished_req_ids: set[str] = field(default_factory=set)
    preempted_req_ids: set[str] = field(default_factory=set)
    # Numbers the plans of one scheduler (a request id may name another request in a later plan).
    step_id: int = 0

    @property
    def total_num_scheduled_tokens(self) -> int:
        return sum(self.num_scheduled_tokens.values())

    @property
    def is_empty(self) -> bool:
        return not self.num_scheduled_tokens
