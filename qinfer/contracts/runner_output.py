"""What the model runner returns for one step."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional


@dataclass
class TokenLogprobs:
    """Logprobs at one generated position: the sampled token's, and the top-k."""

    sampled_logprob: float
    top: dict[int, float]         # token id -> logprob, the k most likely (k = SamplingParams.logprobs)


@dataclass
class ModelRunnerOutput:
    # Order: the order of SchedulerOutput.num_scheduled_tokens.
    req_ids: list[str] = field(default_factory=list)
    # One entry per req_id: [] for a request mid-prefill (no token sampled this
    # step), [token] otherwise. The scheduler appends these to the request's output.
    sampled_token_ids: list[list[int]] = field(default_factory=list)
    # Per req_id, None unless the request asked for logprobs and sampled this step.
    logprobs: list[Optional[TokenLogprobs]] = field(default_factory=list)


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
