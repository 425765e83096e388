"""A stand-in scheduler for ModelRunner tests: hands out blocks, builds SchedulerOutputs
(new requests in full, then deltas), tracks tokens, and can capture every position's hidden state."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from qinfer.contracts.engine_config import EngineConfig
from qinfer.engine.device_defaults import sized_to_device
from qinfer.contracts.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from qinfer.executor.model_runner import ModelRunner
from qinfer.sampling_params import SamplingParams


def make_runner(model_dir, num_kv_blocks=128, block_size=4, **kwargs) -> ModelRunner:
    config = EngineConfig(model=str(model_dir), num_kv_blocks=num_kv_blocks, block_size=block_size, **kwargs)
    runner = ModelRunner(sized_to_device(config))
    runner.init_kv_cache(runner.determine_num_kv_blocks())
    return runner


@dataclass
class DriverRequest:
    prompt: list[int]
    params: SamplingParams
    output: list[int] = field(default_factory=list)
    num_computed: int = 0
    blocks: list[int] = field(default_factory=list)
    is_new: bool = True

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    @property
    def all_tokens(self) -> list[int]:
        return self.prompt + self.output


class RunnerDriver:
    def __init__(self, runner: ModelRunner, capture_hidden: bool = False):
        self.runner, self.block_size = runner, runner.config.block_size
        self.num_blocks = runner.kv_cache.shape[2]
        self.free_blocks: list[int] = []  # released ids; never-used ids come from next_block
        self.next_block = 0
        self.requests: dict[str, DriverRequest] = {}
        self.finished: set[str] = set()
        self.preempted: set[str] = set()
        # req_id -> {position: hidden [H]} when capture_hidden
        self.hidden: dict[str, dict[int, torch.Tensor]] = {}
        self._step_hidden = None
        if capture_hidden:
            self._wrap_forward()

    def _wrap_forward(self):
        model, forward = self.runner.model, self.runner.model.forward

        def capturing_forward(input_ids, positions):
            self._step_hidden = forward(input_ids, positions)
            return self._step_hidden
        model.forward = capturing_forward

    def add(self, req_id: str, prompt: list[int], params: SamplingParams | None = None) -> None:
        self.requests[req_id] = DriverRequest(list(prompt), params or SamplingParams(temperature=0.0))

    def _blocks_for(self, req: DriverRequest, num_new_tokens: int) -> list[int]:
        needed = -(-(req.num_computed + num_new_tokens) // self.block_size) - len(req.blocks)
        new_blocks = [self._allocate_block() for _ in range(max(needed, 0))]
        req.blocks += new_blocks
        return new_blocks

    def _allocate_block(self) -> int:
        if self.free_blocks:
            return self.free_blocks.pop()
        assert self.next_block < self.num_blocks, "test ran out of KV blocks"
        self.next_block += 1
        return self.next_block - 1

    def step(self, plan: dict[str, int]):
        """Run one step computing plan[req_id] tokens of each listed request."""
        new, cached = [], []
        for req_id, num_tokens in plan.items():
            req = self.requests[req_id]
            new_blocks = self._blocks_for(req, num_tokens)
            if req.is_new:
                new.append(NewRequestData(req_id, req.prompt, list(req.output), req.params,
                                          list(req.blocks), req.num_computed))
                req.is_new = False
            else:
                cached.append(CachedRequestData(req_id, new_blocks, req.num_computed))
        scheduler_output = SchedulerOutput(new, cached, dict(plan), self.finished, self.preempted)
        self.finished, self.preempted = set(), set()
        out = self.runner.execute_model(scheduler_output)
        self._record(plan, out)
        return out

    def _record(self, plan, out):
        offset = 0
        for req_id, sampled in zip(out.req_ids, out.sampled_token_ids):
            req = self.requests[req_id]
            if self._step_hidden is not None:
                rows = self.hidden.setdefault(req_id, {})
                for i in range(plan[req_id]):
                    rows[req.num_computed + i] = self._step_hidden[offset + i].clone()
            offset += plan[req_id]
            req.num_computed += plan[req_id]
            req.output += sampled

    def schedule(self, token_budget: int) -> dict[str, int]:
        """vLLM-style plan: each request in order gets what it still needs, within the budget."""
        plan = {}
        for req_id, req in self.requests.items():
            num_tokens = min(req.num_tokens - req.num_computed, token_budget)
            if num_tokens > 0 and req_id not in self.finished:
                plan[req_id] = num_tokens
                token_budget -= num_tokens
        return plan

    def run(self, max_tokens: int, token_budget: int = 1024) -> dict[str, list[int]]:
        """Step until every request has max_tokens outputs; returns the outputs."""
        while any(len(r.output) < max_tokens for r in self.requests.values()):
            plan = {r: n for r, n in self.schedule(token_budget).items()
                    if len(self.requests[r].output) < max_tokens}
            self.step(plan)
        return {req_id: req.output[:max_tokens] for req_id, req in self.requests.items()}

    def finish(self, req_id: str) -> None:
        self._release(req_id)
        self.finished.add(req_id)
        del self.requests[req_id]

    def preempt(self, req_id: str) -> None:
        """Recompute-style preemption: forget KV; the request comes back as new with its output."""
        self._release(req_id)
        self.preempted.add(req_id)
        req = self.requests[req_id]
        req.num_computed, req.is_new = 0, True

    def _release(self, req_id: str) -> None:
        req = self.requests[req_id]
        self.free_blocks += req.blocks[::-1]
        req.blocks = []
