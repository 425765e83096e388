"""Request: the scheduler's state of one sequence (token counters, KV blocks, finish reason)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from qinfer.sampling_params import SamplingParams

if TYPE_CHECKING:
    from qinfer.engine.detokenizer import IncrementalDetokenizer
    from qinfer.contracts.runner_output import TokenLogprobs


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Asked for prompt logprobs and does not have them all: its prefill must run in full."""
        return (self.sampling_params.prompt_logprobs is not None
                and len(self.prompt_logprobs) < self.num_prompt_tokens - 1)

    @property
    def is_finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


_FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


class Request:
    """One sequence. `all_token_ids` is prompt + output; counters say how far the KV cache got."""

    def __init__(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                 eos_token_ids: frozenset[int] = frozenset(),
                 detokenizer: Optional["IncrementalDetokenizer"] = None):
        self.request_id = request_id
        self.prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self.eos_token_ids = eos_token_ids
        # Ids that end the request once it has min_tokens output tokens: stop ids, EOS unless ignored.
        self.stopping_ids = frozenset(sampling_params.stop_token_ids).union(
            () if sampling_params.ignore_eos else eos_token_ids)
        self.detokenizer = detokenizer
        self.all_token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        # A request of this many tokens finishes with "length"; Scheduler.add_request caps it at max_model_len.
        self.max_num_tokens = self.num_prompt_tokens + sampling_params.max_tokens
        self.status = RequestStatus.WAITING
        self.num_computed_tokens = 0      # tokens whose KV is in the cache once the scheduled steps ran
        # Tokens being sampled by scheduled steps whose ids are not on the host yet (async scheduling
        # keeps one step in flight; the synchronous engine is back to 0 after every step).
        self.num_output_placeholders = 0
        self.admitted_step_id = 0         # SchedulerOutput.step_id that last admitted it (first or resumed)
        self.num_cached_tokens = 0        # prompt tokens served by prefix-cache hits (first schedule)
        self.block_ids: list[int] = []
        self.block_hashes: list[int] = []  # chained hashes of full blocks, grown lazily
        self.num_hashed_blocks = 0         # leading blocks of block_ids registered in the prefix cache
        self.num_freed_blocks = 0          # leading blocks of block_ids released behind a sliding window
        self.stop_reason: Optional[object] = None
        # SamplingParams.prompt_logprobs: entry i is of prompt token i + 1, as the runner computes them.
        self.prompt_logprobs: list["TokenLogprobs"] = []

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.all_token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.all_token_ids[self.num_prompt_tokens:]

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Asked for prompt logprobs and does not have them all: its prefill must run in full."""
        return (self.sampling_params.prompt_logprobs is not None
                and len(self.prompt_logprobs) < self.num_prompt_tokens - 1)

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> Optional[str]:
        return _FINISH_REASONS.get(self.status)


@dataclass
class RequestDeltas:
    """What one update added to the requests it touched (returned by Scheduler.update_from_output).

    One list per field, one entry per request: a step builds no object per request (one tuple per
    request was a quarter of update_from_output's time at batch 256). Iterating gives
    (request, new_token_ids, new_text, new_logprobs) per request.
    """

    requests: list[Request] = field(default_factory=list)
    new_token_ids: list[list[int]] = field(default_factory=list)
    new_texts: list[str] = field(default_factory=list)
    new_logprobs: list[Sequence] = field(default_factory=list)   # () when the request asked for none

    def append(self, request: Request, new_token_ids: list[int], new_text: str, new_logprobs: Sequence) -> None:
        self.requests.append(request)
        self.new_token_ids.append(new_token_ids)
        self.new_texts.append(new_text)
        self.new_logprobs.append(new_logprobs)

    def __iter__(self) -> Iterator[tuple[Request, list[int], str, Sequence]]:
        return zip(self.requests, self.new_token_ids, self.new_texts, self.new_logprobs)

    def __len__(self) -> int:
        return len(self.requests)
