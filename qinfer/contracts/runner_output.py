"""What the model runner returns for one step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional


class TokenLogprobs(NamedTuple):
    """Logprobs at one position: first the token there (the sampled one, or the prompt's next
    token), then the k most likely, descending (k = SamplingParams.logprobs / prompt_logprobs)."""

    token_ids: list[int]          # [1 + k]
    logprobs: list[float]         # [1 + k]
    rank: int                     # token_ids[0]'s rank in the vocabulary (1 = most likely); top-k: 1..k


@dataclass
class PromptLogprobs:
    """Prompt logprobs computed by one step (a prefill chunk): entry i is of prompt token start + i."""

    start: int
    positions: list[TokenLogprobs]


@dataclass
class ModelRunnerOutput:
    # Order: the order of SchedulerOutput.num_scheduled_tokens.
    req_ids: list[str] = field(default_factory=list)
    # One entry per req_id: [] for a request mid-prefill (no token sampled this
    # step), [token] otherwise. The scheduler appends these to the request's output.
    sampled_token_ids: list[list[int]] = field(default_factory=list)
    # Per req_id, None unless the request asked for logprobs and sampled this step.
    logprobs: list[Optional[TokenLogprobs]] = field(default_factory=list)
    # req_id -> its prompt logprobs of this step; only requests that asked and prefilled prompt tokens.
    prompt_logprobs: dict[str, PromptLogprobs] = field(default_factory=dict)


class AsyncModelRunnerOutput:
    """The output of a step launched without waiting for its sampled ids (async scheduling).

    get() waits until the ids reached the host and builds the ModelRunnerOutput, once.
    """

    def __init__(self, resolve: Callable[[], ModelRunnerOutput]):
        self._resolve: Optional[Callable[[], ModelRunnerOutput]] = resolve
        self._output: Optional[ModelRunnerOutput] = None

    def get(self) -> ModelRunnerOutput:
        if self._resolve is not None:
            self._output, self._resolve = self._resolve(), None
        return self._output
