"""What the engine hands back: per-request deltas from step(), whole results from LLM.generate."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from qinfer.contracts.runner_output import TokenLogprobs


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
    logprobs: Optional[list[TokenLogprobs]] = None
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
