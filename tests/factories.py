"""Factories for engine-core tests: schedulers on tiny block counts, requests, and the
runner output a step would produce (no model)."""
from __future__ import annotations

from typing import Iterable, Optional

from qinfer.contracts.engine_config import EngineConfig
from qinfer.contracts.runner_output import ModelRunnerOutput
from qinfer.engine.request import Request
from qinfer.engine.scheduler import Scheduler
from qinfer.sampling_params import SamplingParams

NEXT_TOKEN = 7


def make_scheduler(num_blocks=16, block_size=4, max_num_seqs=8, max_num_batched_tokens=64,
                   enable_prefix_caching=True, max_model_len=128, sliding_window=None) -> Scheduler:
    config = EngineConfig(model="unused", max_num_seqs=max_num_seqs, block_size=block_size,
                          max_num_batched_tokens=max_num_batched_tokens,
                          enable_prefix_caching=enable_prefix_caching)
    return Scheduler(config, num_blocks, max_model_len, sliding_window=sliding_window)


def make_request(request_id: str = "r", num_prompt_tokens: Optional[int] = None,
                 prompt: Optional[Iterable[int]] = None, **params) -> Request:
    """A request of `prompt` ids, or of num_prompt_tokens ids derived from its id; ignore_eos
    unless told otherwise, so only max_tokens ends it."""
    prompt = prompt if prompt is not None else [hash((request_id, i)) % 1000 for i in range(num_prompt_tokens)]
    params.setdefault("ignore_eos", True)
    return Request(request_id, list(prompt), SamplingParams(**params), eos_token_ids=frozenset({0}))


def fake_runner_output(scheduler: Scheduler, scheduler_output, token_id: int = NEXT_TOKEN) -> ModelRunnerOutput:
    """Sample one token for each request whose scheduled tokens reach its end (like the runner):
    the scheduler counts such a token as a placeholder until the update."""
    req_ids = list(scheduler_output.num_scheduled_tokens)
    sampled = [[token_id] if scheduler.requests[req_id].num_output_placeholders else [] for req_id in req_ids]
    return ModelRunnerOutput(req_ids=req_ids, sampled_token_ids=sampled, logprobs=[None] * len(req_ids))


def step(scheduler: Scheduler, token_id: int = NEXT_TOKEN):
    """Schedule and update once; (scheduler output, request deltas)."""
    scheduler_output = scheduler.schedule()
    return scheduler_output, scheduler.update_from_output(scheduler_output,
                                                          fake_runner_output(scheduler, scheduler_output, token_id))


def run_to_completion(scheduler: Scheduler, max_steps: int = 1000) -> None:
    for _ in range(max_steps):
        if not scheduler.has_unfinished_requests():
            return
        step(scheduler)
    raise AssertionError("scheduler did not finish")
