"""What the engine hands back: per-request deltas from step(), whole results from LLM.generate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(slots=True)
class Logprob:
    """One token's entry at one position (vLLM's Logprob): logprob of the raw model distribution,
    rank in the whole vocabulary (1 = most likely), the token decoded alone."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# Per position: token id -> Logprob; the token at the position (sampled, or the prompt's) and the top-k.
PositionLogprobs = dict[int, Logprob]


@dataclass(slots=True)   # built once per request per step: slots make that cheaper
class CompletionOutput:
    """One of the n completions of a request; cumulative, plus the delta of the last step.

    token_ids and logprobs are the engine's live lists: while the completion runs,
    later steps extend them (copy to keep a snapshot); once finished they are final.
    """

    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: Optional[str] = None        # "stop" | "length" | "abort" | None while running
    stop_reason: Optional[object] = None       # the stop string or stop token id that matched
    logprobs: Optional[list[PositionLogprobs]] = None        # one per token_ids entry (SamplingParams.logprobs)
    new_token_ids: list[int] = field(default_factory=list)   # added by the last step
    new_text: str = ""                                       # added by the last step

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    num_cached_tokens: int = 0                 # prompt tokens served from the prefix cache
    prompt: Optional[str] = None
    # SamplingParams.prompt_logprobs: one per prompt token, the first None (nothing predicts it);
    # set once the prompt is computed.
    prompt_logprobs: Optional[list[Optional[PositionLogprobs]]] = None
