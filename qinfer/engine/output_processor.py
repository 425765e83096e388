"""Turns per-sequence deltas into RequestOutputs, gathering the n completions of one request."""
from __future__ import annotations

import dataclasses
from typing import Optional

from qinfer.engine.logprobs import LogprobsBuilder
from qinfer.engine.outputs import CompletionOutput, PositionLogprobs, RequestOutput
from qinfer.engine.request import Request, RequestDeltas


@dataclasses.dataclass
class ParentRequest:
    """One user request: n completions, each fed by a child sequence of the scheduler."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: list[int]
    child_ids: list[str]
    completions: list[CompletionOutput]
    num_cached_tokens: int = 0
    awaits_prompt_logprobs: bool = False        # asked for them, not filled in yet
    prompt_logprobs: Optional[list[Optional[PositionLogprobs]]] = None

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.completions)


class OutputProcessor:
    def __init__(self, logprobs: LogprobsBuilder):
        self.parents: dict[str, ParentRequest] = {}
        self.child_to_completion: dict[str, tuple[ParentRequest, CompletionOutput]] = {}
        self.logprobs = logprobs

    def add(self, request_id: str, prompt: Optional[str], prompt_token_ids: list[int],
            child_ids: list[str], want_logprobs: bool, want_prompt_logprobs: bool = False) -> None:
        completions = [CompletionOutput(index=i, logprobs=[] if want_logprobs else None)
                       for i in range(len(child_ids))]
        parent = ParentRequest(request_id, prompt, prompt_token_ids, child_ids, completions,
                               awaits_prompt_logprobs=want_prompt_logprobs)
        self.parents[request_id] = parent
        for child_id, completion in zip(child_ids, completions):
            self.child_to_completion[child_id] = (parent, completion)

    def child_ids(self, request_id: str) -> list[str]:
        parent = self.parents.get(request_id)
        return parent.child_ids if parent is not None else []

    def process(self, deltas: RequestDeltas) -> list[RequestOutput]:
        """One RequestOutput per request the deltas touched, in the order of their first delta."""
        outputs: list = []
        # Requests with n > 1: emitted once all of this step's deltas are in; here their place in outputs.
        pending: dict[str, int] = {}
        parents, child_to_completion = self.parents, self.child_to_completion
        for request, new_token_ids, new_text, new_logprobs in deltas:
            parent, completion = child_to_completion[request.request_id]
            if parent.awaits_prompt_logprobs:
                self._fill_prompt_logprobs(parent, request)
            if new_logprobs:
                new_logprobs = self.logprobs.positions(new_logprobs)
            if len(parent.completions) > 1:
                _apply(completion, request, new_token_ids, new_text, new_logprobs)
                if request.num_cached_tokens > parent.num_cached_tokens:
                    parent.num_cached_tokens = request.num_cached_tokens
                if completion.finish_reason is not None:
                    del child_to_completion[request.request_id]
                if parent.request_id not in pending:
                    pending[parent.request_id] = len(outputs)
                    outputs.append(parent)
                continue
            # n == 1, the common case, inlined (it runs per request per step): the delta completes the
            # request's output, built from the delta (only the cumulative fields are kept between steps).
            completion.token_ids.extend(new_token_ids)
            completion.text = text = completion.text + new_text
            if completion.logprobs is not None:
                completion.logprobs.extend(new_logprobs)
            finish_reason = request.finish_reason
            if finish_reason is not None:
                del child_to_completion[request.request_id], parents[parent.request_id]
            snapshot = CompletionOutput(0, completion.token_ids, text, finish_reason, request.stop_reason,
                                        completion.logprobs, new_token_ids, new_text)
            outputs.append(RequestOutput(parent.request_id, parent.prompt_token_ids, [snapshot],
                                         finish_reason is not None, request.num_cached_tokens, parent.prompt,
                                         parent.prompt_logprobs))
        for index in pending.values():
            outputs[index] = self._emit(outputs[index])
        return outputs

    def _fill_prompt_logprobs(self, parent: ParentRequest, request: Request) -> None:
        """Once a sequence has them all (its n siblings compute the same ones)."""
        if len(request.prompt_logprobs) == request.num_prompt_tokens - 1:
            parent.prompt_logprobs = self.logprobs.prompt(request.prompt_logprobs)
            parent.awaits_prompt_logprobs = False

    def _emit(self, parent: ParentRequest) -> RequestOutput:
        """The output of a request with n > 1 completions."""
        finished = parent.finished
        if finished:
            del self.parents[parent.request_id]
        outputs = [_snapshot(c) for c in parent.completions]
        for completion in parent.completions:   # a sibling without a delta next step must show none
            completion.new_token_ids, completion.new_text = [], ""
        return RequestOutput(parent.request_id, parent.prompt_token_ids, outputs, finished,
                             parent.num_cached_tokens, parent.prompt, parent.prompt_logprobs)


def _apply(completion: CompletionOutput, request: Request, new_token_ids: list[int], new_text: str,
           new_logprobs) -> None:
    completion.token_ids.extend(new_token_ids)
    completion.text += new_text
    completion.new_token_ids = new_token_ids
    completion.new_text = new_text
    completion.finish_reason = request.finish_reason
    completion.stop_reason = request.stop_reason
    if completion.logprobs is not None:
        completion.logprobs.extend(new_logprobs)


def _snapshot(completion: CompletionOutput) -> CompletionOutput:
    """The output of one step. token_ids and logprobs are the engine's own lists, not copies:
    copying them every step would cost O(output length) per request per step. While the
    completion runs they keep growing; once it finished the engine never touches them again."""
    return CompletionOutput(completion.index, completion.token_ids, completion.text, completion.finish_reason,
                            completion.stop_reason, completion.logprobs,
                            completion.new_token_ids, completion.new_text)
