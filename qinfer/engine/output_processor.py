"""Turns per-sequence deltas into RequestOutputs, gathering the n completions of one request."""
from __future__ import annotations

import dataclasses
from typing import Optional

from qinfer.engine.outputs import CompletionOutput, RequestOutput
from qinfer.engine.request import RequestDelta


@dataclasses.dataclass
class ParentRequest:
    """One user request: n completions, each fed by a child sequence of the scheduler."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    child_ids: list[str]
    completions: list[CompletionOutput]
    num_cached_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.completions)


class OutputProcessor:
    def __init__(self):
        self.parents: dict[str, ParentRequest] = {}
        self.child_to_completion: dict[str, tuple[ParentRequest, CompletionOutput]] = {}

    def add(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
            child_ids: list[str], want_logprobs: bool) -> None:
        completions = [CompletionOutput(index=i, logprobs=[] if want_logprobs else None)
                       for i in range(len(child_ids))]
        parent = ParentRequest(request_id, prompt, prompt_token_ids, child_ids, completions)
        self.parents[request_id] = parent
        for child_id, completion in zip(child_ids, completions):
            self.child_to_completion[child_id] = (parent, completion)

    def child_ids(self, request_id: str) -> list[str]:
        parent = self.parents.get(request_id)
        return parent.child_ids if parent is not None else []

    def process(self, deltas: list[RequestDelta]) -> list[RequestOutput]:
        touched: dict[str, ParentRequest] = {}
        child_to_completion = self.child_to_completion
        for delta in deltas:
            request = delta.request
            parent, completion = child_to_completion[request.request_id]
            _apply(completion, delta)
            if request.num_cached_tokens > parent.num_cached_tokens:
                parent.num_cached_tokens = request.num_cached_tokens
            if completion.finish_reason is not None:
                del child_to_completion[request.request_id]
            touched[parent.request_id] = parent
        return [self._emit(parent) for parent in touched.values()]

    def _emit(self, parent: ParentRequest) -> RequestOutput:
        completions = parent.completions
        # n == 1 is the common case: skip the generator of `parent.finished`.
        finished = completions[0].finish_reason is not None if len(completions) == 1 else parent.finished
        if finished:
            del self.parents[parent.request_id]
        outputs = [_snapshot(c) for c in completions]
        if len(completions) > 1:
            for completion in completions:   # a sibling without a delta next step must show none
                completion.new_token_ids, completion.new_text = [], ""
        return RequestOutput(parent.request_id, parent.prompt_token_ids, outputs, finished,
                             parent.num_cached_tokens, parent.prompt)


def _apply(completion: CompletionOutput, delta: RequestDelta) -> None:
    request = delta.request
    completion.token_ids.extend(delta.new_token_ids)
    completion.text += delta.new_text
    completion.new_token_ids = delta.new_token_ids
    completion.new_text = delta.new_text
    completion.finish_reason = request.finish_reason
    completion.stop_reason = request.stop_reason
    if completion.logprobs is not None:
        completion.logprobs.extend(delta.new_logprobs)


def _snapshot(completion: CompletionOutput) -> CompletionOutput:
    """The output of one step. token_ids and logprobs are the engine's own lists, not copies:
    copying them every step would cost O(output length) per request per step. While the
    completion runs they keep growing; once it finished the engine never touches them again."""
    return CompletionOutput(completion.index, completion.token_ids, completion.text, completion.finish_reason,
                            completion.stop_reason, completion.logprobs,
                            completion.new_token_ids, completion.new_text)
