"""Scheduler in the style of vLLM v1: no prefill/decode phases, only a per-step token budget.

Each request has `num_computed_tokens` and a target (`num_tokens`: prompt +
output). A step hands the budget to running requests first, in order, then to
waiting ones (FCFS). Chunked prefill and prefix caching fall out of this rule.

A scheduled step counts as computed at once, and a step that reaches a request's end
counts one sampled token as a placeholder until its id comes back through
update_from_output. So the next step can be planned while this one still runs
(async scheduling): the in-flight token is that step's input, fed by the runner on
the device. A request that finishes while a step still samples for it has that
token dropped when it arrives (also when its id was given to a new request since).
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional

from qinfer.contracts.engine_config import EngineConfig
from qinfer.contracts.runner_output import ModelRunnerOutput
from qinfer.contracts.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from qinfer.engine.block_manager import BlockManager
from qinfer.engine.request import Request, RequestDeltas, RequestStatus


@dataclass
class SchedulerStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float            # share of KV blocks referenced by requests
    num_preemptions: int
    prefix_cache_queries: int        # tokens looked up in the prefix cache
    prefix_cache_hits: int           # of those, tokens found


class Scheduler:
    def __init__(self, config: EngineConfig, num_kv_blocks: int, max_model_len: int,
                 sliding_window: Optional[int] = None):
        """sliding_window: the window every attention layer shares (None: some layer sees the
        whole context); blocks behind it are freed while a request runs."""
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.max_model_len = max_model_len
        self.block_manager = BlockManager(num_kv_blocks, config.block_size, config.enable_prefix_caching,
                                          sliding_window)
        self.requests: dict[str, Request] = {}     # every unfinished request
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []           # admission order: the newest is last
        self.finished_req_ids: set[str] = set()    # the runner must forget these next step
        self.preempted_req_ids: set[str] = set()
        self.finished_between_steps: list[Request] = []   # aborted etc., reported by the next update
        self._step_ids = itertools.count(1)
        self.num_preemptions = 0

    # -- requests --------------------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        request.max_num_tokens = min(request.max_num_tokens, self.max_model_len)
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            request = self.requests.get(request_id)
            if request is not None:
                self._finish_between_steps(request, RequestStatus.FINISHED_ABORTED)

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests) or bool(self.finished_between_steps)

    def fits(self, num_tokens: int) -> bool:
        """Whether a request of num_tokens can ever run: it fits the whole KV cache."""
        return self.block_manager.fits(num_tokens)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.block_manager.capacity_tokens

    def num_admissible(self) -> int:
        """New requests the scheduler can take now without queueing: free sequence slots and KV blocks."""
        block_manager = self.block_manager
        num_free_slots = self.max_num_seqs - len(self.running) - len(self.waiting)
        num_waiting_blocks = sum(block_manager.num_blocks_for(r.num_tokens) for r in self.waiting)
        return max(0, min(num_free_slots, block_manager.num_free_blocks - num_waiting_blocks))

    def make_stats(self) -> SchedulerStats:
        block_manager = self.block_manager
        return SchedulerStats(
            num_running=len(self.running),
            num_waiting=len(self.waiting),
            kv_cache_usage=block_manager.usage,
            num_preemptions=self.num_preemptions,
            prefix_cache_queries=block_manager.num_prefix_queries,
            prefix_cache_hits=block_manager.num_prefix_hits,
        )

    # -- schedule --------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        scheduler_output = SchedulerOutput(step_id=next(self._step_ids))
        budget = self._schedule_running(scheduler_output, self.max_num_batched_tokens)
        if not self.preempted_req_ids:
            self._schedule_waiting(scheduler_output, budget)
        if not scheduler_output.is_empty:
            # Handed over only with a step the runner executes.
            scheduler_output.finished_req_ids, self.finished_req_ids = self.finished_req_ids, set()
            scheduler_output.preempted_req_ids, self.preempted_req_ids = self.preempted_req_ids, set()
        return scheduler_output

    @staticmethod
    def _advance(request: Request, num_new_tokens: int) -> None:
        """Count a scheduled step's tokens as computed; a step that reaches the end samples a placeholder."""
        request.num_computed_tokens += num_new_tokens
        if request.num_computed_tokens == len(request.all_token_ids) + request.num_output_placeholders:
            request.num_output_placeholders += 1

    def _schedule_running(self, scheduler_output: SchedulerOutput, budget: int) -> int:
        block_manager, running = self.block_manager, self.running
        block_size, max_num_tokens = block_manager.block_size, block_manager.num_blocks * block_manager.block_size
        cached_requests, num_scheduled_tokens = scheduler_output.cached_requests, scheduler_output.num_scheduled_tokens
        is_windowed = block_manager.sliding_window is not None
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            num_tokens = len(request.all_token_ids) + request.num_output_placeholders
            if request.num_output_placeholders and num_tokens >= request.max_num_tokens:
                i += 1   # the tokens in flight finish it: a step more would be thrown away
                continue
            if num_tokens > max_num_tokens:
                # Longer than the whole KV cache: preempting others would never make it fit.
                self._finish_between_steps(request, RequestStatus.FINISHED_LENGTH)
                continue
            num_computed = request.num_computed_tokens
            if is_windowed:
                block_manager.free_blocks_behind_window(request, num_computed)
            num_new_tokens = num_tokens - num_computed if num_tokens - num_computed < budget else budget
            end = num_computed + num_new_tokens
            if end <= len(request.block_ids) * block_size:
                new_block_ids = _NO_BLOCKS   # the common decode step: the held blocks have room
            else:
                if not self._make_room(request, num_new_tokens):
                    break   # the request itself was preempted: nothing newer is left
                new_block_ids = block_manager.allocate(request, num_new_tokens)
            if end // block_size > request.num_hashed_blocks:   # this step fills a block
                block_manager.cache_full_blocks(request, end)
            cached_requests.append(CachedRequestData(request.request_id, new_block_ids, num_computed))
            num_scheduled_tokens[request.request_id] = num_new_tokens
            # _advance, inlined (it runs per request per step).
            request.num_computed_tokens = end
            if end == num_tokens:
                request.num_output_placeholders += 1
            budget -= num_new_tokens
            i += 1
        return budget

    def _make_room(self, request: Request, num_new_tokens: int) -> bool:
        """Preempt the newest running requests until `request` fits; False if it was preempted itself."""
        while not self.block_manager.can_allocate(request, num_new_tokens):
            victim = self.running.pop()
            self._preempt(victim)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        # Recompute later: the KV is dropped, the output tokens are kept.
        self.block_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        self.waiting.appendleft(request)
        self.preempted_req_ids.add(request.request_id)
        self.num_preemptions += 1

    def _schedule_waiting(self, scheduler_output: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = self.waiting[0]
            # Prompt logprobs need the LM head on every prompt position: no prefix-cache hits (vLLM's rule).
            computed_blocks = [] if request.needs_prompt_logprobs else self.block_manager.get_computed_blocks(request)
            num_computed_tokens = len(computed_blocks) * self.block_manager.block_size
            num_new_tokens = min(request.num_tokens - num_computed_tokens, budget)
            if not self.block_manager.can_allocate(request, num_new_tokens, computed_blocks):
                break
            self.waiting.popleft()
            self._admit(request, computed_blocks, num_computed_tokens, num_new_tokens, scheduler_output.step_id)
            scheduler_output.new_requests.append(_new_request_data(request))
            scheduler_output.num_scheduled_tokens[request.request_id] = num_new_tokens
            self._advance(request, num_new_tokens)
            budget -= num_new_tokens

    def _admit(self, request: Request, computed_blocks: list[int], num_computed_tokens: int,
               num_new_tokens: int, step_id: int) -> None:
        self.block_manager.allocate(request, num_new_tokens, computed_blocks)
        self.block_manager.cache_full_blocks(request, num_computed_tokens + num_new_tokens)
        self.block_manager.record_lookup(request.num_tokens, len(computed_blocks))
        if request.status == RequestStatus.WAITING:
            request.num_cached_tokens = num_computed_tokens
        request.num_computed_tokens = num_computed_tokens
        request.status = RequestStatus.RUNNING
        request.admitted_step_id = step_id
        self.running.append(request)

    # -- update ----------------------------------------------------------------------------
    def update_from_output(self, scheduler_output: SchedulerOutput, runner_output: ModelRunnerOutput) -> RequestDeltas:
        """Apply the ids sampled by the step `so` (counted as computed when it was scheduled).

        The loop runs per request per step, so its common path (append, no stop, decode) is inline.
        """
        deltas = RequestDeltas()
        for request in self.finished_between_steps:
            deltas.append(request, [], _new_text(request), [])
        self.finished_between_steps = []
        # RequestDeltas.append, inlined.
        add_request, add_token_ids = deltas.requests.append, deltas.new_token_ids.append
        add_text, add_logprobs = deltas.new_texts.append, deltas.new_logprobs.append
        requests, step_id = self.requests, scheduler_output.step_id
        if runner_output.prompt_logprobs:   # before the tokens: the step that ends a prompt samples too
            self._add_prompt_logprobs(runner_output.prompt_logprobs, step_id)
        for request_id, token_ids, logprobs in zip(runner_output.req_ids, runner_output.sampled_token_ids,
                                                   runner_output.logprobs or itertools.repeat(None)):
            request = requests.get(request_id)
            # None: it finished since `so` was planned (async scheduling); admitted later: a new
            # request took the id of one that finished so. Either way the token is not its.
            if not token_ids or request is None or request.admitted_step_id > step_id:
                continue
            request.num_output_placeholders -= len(token_ids)
            request.all_token_ids.extend(token_ids)
            status = None
            if token_ids[-1] in request.stopping_ids or len(request.all_token_ids) >= request.max_num_tokens:
                status = self._check_stop(request, token_ids[-1])   # it may stop: the exact reason
            new_text = ""
            detokenizer = request.detokenizer
            if detokenizer is not None:
                # A matched EOS / stop id is not text.
                text_ids = token_ids[:-1] if status == _STOPPED else token_ids
                if detokenizer.stop:
                    status, new_text = self._detokenize_with_stops(request, detokenizer, text_ids, status)
                else:
                    new_text = detokenizer.decode(text_ids)
            if status is not None:
                self._finish(request, status)
            add_request(request)
            add_token_ids(token_ids)
            add_text(new_text)
            add_logprobs([logprobs] if logprobs is not None else _NO_LOGPROBS)
        return deltas

    def _add_prompt_logprobs(self, prompt_logprobs: dict, step_id: int) -> None:
        for request_id, chunk in prompt_logprobs.items():
            request = self.requests.get(request_id)
            if request is None or request.admitted_step_id > step_id:
                continue
            # A prefill recomputed after preemption gives positions again: each is kept once.
            num_known = len(request.prompt_logprobs) + 1 - chunk.start
            if 0 <= num_known < len(chunk.positions):
                request.prompt_logprobs.extend(chunk.positions[num_known:])

    def _detokenize_with_stops(self, request: Request, detokenizer, text_ids: list[int],
                               status: Optional[RequestStatus]) -> tuple[Optional[RequestStatus], str]:
        """Extend the text; a stop string in it stops the request (the text then ends before it).
        Returns the status and the text that can be streamed now."""
        stop_str = detokenizer.update(text_ids, request.num_output_tokens, request.sampling_params.min_tokens)
        if stop_str is not None:
            request.stop_reason = stop_str
            status = RequestStatus.FINISHED_STOPPED
        return status, detokenizer.take_new_text(finished=status is not None)

    def _check_stop(self, request: Request, token_id: int) -> Optional[RequestStatus]:
        num_tokens = len(request.all_token_ids)
        if (token_id in request.stopping_ids
                and num_tokens - request.num_prompt_tokens >= request.sampling_params.min_tokens):
            if token_id not in request.eos_token_ids or request.sampling_params.ignore_eos:
                request.stop_reason = token_id   # a stop id is reported, EOS is not
            return RequestStatus.FINISHED_STOPPED
        if num_tokens >= request.max_num_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def _finish_between_steps(self, request: Request, status: RequestStatus) -> None:
        self._finish(request, status)
        self.finished_between_steps.append(request)

    def _finish(self, request: Request, status: RequestStatus) -> None:
        if request.status == RequestStatus.RUNNING:
            self.running.remove(request)
            self.finished_req_ids.add(request.request_id)
        else:
            self.waiting.remove(request)   # the runner does not hold it (never scheduled, or preempted)
        request.status = status
        self.block_manager.free(request)
        del self.requests[request.request_id]


# Compared per request per step: a module constant, as a member lookup on the enum class runs
# Python code (Python 3.11).
_STOPPED = RequestStatus.FINISHED_STOPPED
# Shared empty sequences, read-only, so the per-request-per-step path allocates less
# (fewer objects, fewer garbage collections): deltas without logprobs, steps without new blocks.
_NO_LOGPROBS: tuple = ()
_NO_BLOCKS: tuple = ()


def _new_text(request: Request) -> str:
    return request.detokenizer.take_new_text(request.is_finished) if request.detokenizer else ""


def _new_request_data(request: Request) -> NewRequestData:
    return NewRequestData(
        req_id=request.request_id,
        prompt_token_ids=list(request.prompt_token_ids),
        output_token_ids=request.output_token_ids,
        sampling_params=request.sampling_params,
        block_ids=list(request.block_ids),
        num_computed_tokens=request.num_computed_tokens,
    )
