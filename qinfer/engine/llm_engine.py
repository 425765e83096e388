"""LLMEngine: tokenizer + scheduler + executor, stepped by the caller (LLM.generate or the worker)."""
from __future__ import annotations

import dataclasses
import logging
import random
import time
from typing import Callable, Iterable, Optional, Union

from qinfer.contracts.engine_config import EngineConfig, check_engine_config
from qinfer.engine.device_defaults import sized_to_device
from qinfer.engine.detokenizer import IncrementalDetokenizer
from qinfer.engine.logprobs import LogprobsBuilder
from qinfer.engine.output_processor import OutputProcessor
from qinfer.engine.outputs import RequestOutput
from qinfer.engine.request import Request
from qinfer.engine.scheduler import Scheduler, SchedulerStats
from qinfer.contracts.scheduler_output import SchedulerOutput
from qinfer.errors import InvalidRequestError, needs_extra
from qinfer.contracts.runner_output import AsyncModelRunnerOutput, ModelRunnerOutput
from qinfer.sampling_params import SamplingParams

log = logging.getLogger(__name__)
_MAX_SEED = 2**63


@dataclasses.dataclass
class EngineStats(SchedulerStats):
    num_steps: int
    num_scheduled_tokens: int        # prompt + recomputed + decode tokens run through the model
    step_time_s: float               # wall time of step() calls
    executor_time_s: float           # of which inside the executor (async: launching, waiting for ids)


class LLMEngine:
    def __init__(self, config: EngineConfig):
        with needs_extra("LLMEngine"):       # the light install has no torch
            check_engine_config(config)      # before transformers sees the path (it would try the hub)
            from transformers import AutoTokenizer

            from qinfer.executor.executor import Executor
            from qinfer.executor.model_runner import eos_token_ids

        config = sized_to_device(config)
        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(config.model)
        self.executor = Executor(config)
        self.max_model_len = self.executor.max_model_len
        self.vocab_size = self.executor.hf_config.vocab_size
        # The runner masks these ids before min_tokens; the same set stops a request.
        self.eos_token_ids = frozenset(eos_token_ids(config.model, self.executor.hf_config))
        self.num_kv_blocks = self.executor.determine_num_kv_blocks()
        self.executor.init_kv_cache(self.num_kv_blocks)
        self.scheduler = Scheduler(config, self.num_kv_blocks, self.max_model_len, self.executor.sliding_window)
        self.output_processor = OutputProcessor(LogprobsBuilder(self.tokenizer))
        self._seed_rng = random.Random(config.seed)   # seeds the n children of unseeded requests
        self._num_steps = self._num_scheduled_tokens = 0
        self._step_time_s = self._executor_time_s = 0.0
        wants_async = config.async_scheduling
        if wants_async is None:
            wants_async = config.device.startswith("cuda")
        self.async_scheduling = wants_async and config.tensor_parallel_size == 1
        if config.async_scheduling and not self.async_scheduling:
            log.warning("async_scheduling needs tensor_parallel_size 1: the engine steps synchronously")
        self._in_flight: Optional[tuple[SchedulerOutput, AsyncModelRunnerOutput]] = None

    @classmethod
    def from_kwargs(cls, model: str, **kwargs) -> "LLMEngine":
        return cls(EngineConfig(model=model, **kwargs))

    # -- requests --------------------------------------------------------------------------
    def add_request(self, request_id: str, prompt: Optional[str] = None,
                    sampling_params: Optional[SamplingParams] = None,
                    prompt_token_ids: Optional[list[int]] = None) -> None:
        """Queue a request; InvalidRequestError if it can never run (the engine is left as it was)."""
        params = sampling_params if sampling_params is not None else SamplingParams()
        token_ids = self.validate_request(prompt, params, prompt_token_ids)
        child_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        self._check_new_ids([request_id, *child_ids])
        self.output_processor.add(request_id, prompt, token_ids, child_ids, params.logprobs is not None,
                                  params.prompt_logprobs is not None)
        for child_id, child_params in zip(child_ids, self._child_params(params)):
            self.scheduler.add_request(self._make_request(child_id, token_ids, child_params))

    def validate_request(self, prompt: Optional[str], params: SamplingParams,
                         prompt_token_ids: Optional[list[int]] = None) -> list[int]:
        """The prompt's token ids, or InvalidRequestError saying why the request cannot run."""
        if not isinstance(params, SamplingParams):
            raise InvalidRequestError(f"sampling_params must be a qinfer.SamplingParams, not {type(params).__name__}")
        token_ids = self._prompt_token_ids(prompt, prompt_token_ids)
        self._check_prompt_length(len(token_ids))
        return token_ids

    def _prompt_token_ids(self, prompt: Optional[str], prompt_token_ids: Optional[list[int]]) -> list[int]:
        if prompt_token_ids is None:
            if not isinstance(prompt, str) or not prompt:
                raise InvalidRequestError("the prompt is empty: give a non-empty prompt or prompt_token_ids")
            return self.tokenizer(prompt).input_ids
        token_ids = list(prompt_token_ids)
        if not token_ids:
            raise InvalidRequestError("prompt_token_ids is empty")
        if not all(isinstance(t, int) and 0 <= t < self.vocab_size for t in token_ids):
            raise InvalidRequestError(f"prompt_token_ids must be integers in [0, {self.vocab_size}) "
                                      "(the model's vocabulary)")
        return token_ids

    def _check_prompt_length(self, num_prompt_tokens: int) -> None:
        if num_prompt_tokens + 1 > self.max_model_len:
            raise InvalidRequestError(f"the prompt has {num_prompt_tokens} tokens; with one generated token "
                                      f"that exceeds the model's max_model_len of {self.max_model_len}")
        if not self.scheduler.fits(num_prompt_tokens + 1):
            raise InvalidRequestError(f"the prompt has {num_prompt_tokens} tokens; the KV cache holds "
                                      f"{self.scheduler.kv_capacity_tokens} tokens in all")

    def _check_new_ids(self, ids: list[str]) -> None:
        for request_id in ids:
            if request_id in self.output_processor.parents or request_id in self.scheduler.requests:
                raise InvalidRequestError(f"request id {request_id!r} is already in use")

    def _child_params(self, params: SamplingParams) -> list[SamplingParams]:
        if params.n == 1:
            return [params]
        # Distinct seeds so the n completions differ, yet reproduce for a seeded parent.
        base_seed = params.seed if params.seed is not None else self._seed_rng.randrange(_MAX_SEED)
        return [params.model_copy(update={"n": 1, "seed": (base_seed + i) % _MAX_SEED})
                for i in range(params.n)]

    def _make_request(self, request_id: str, token_ids: list[int], params: SamplingParams) -> Request:
        detokenizer = IncrementalDetokenizer(self.tokenizer, token_ids, params.stop,
                                             params.include_stop_str_in_output)
        return Request(request_id, token_ids, params, self.eos_token_ids, detokenizer)

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None:
        """Finish the request(s) with finish_reason "abort"; reported by the next step()."""
        request_ids = [request_id] if isinstance(request_id, str) else list(request_id)
        for parent_id in request_ids:
            self.scheduler.abort_requests(self.output_processor.child_ids(parent_id))

    # -- stepping ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; returns the deltas of the requests it advanced or finished.

        Async scheduling: launch the batch, then finish the one launched by the previous call
        while the device runs this one; the deltas are those of that previous batch.
        """
        start = time.perf_counter()
        scheduler_output = self.scheduler.schedule()
        self._num_scheduled_tokens += scheduler_output.total_num_scheduled_tokens
        if self.async_scheduling:
            done_so, runner_output = self._launch_and_take_previous(scheduler_output)
        else:
            done_so, runner_output = scheduler_output, self._execute(scheduler_output)
        outputs = self.output_processor.process(self.scheduler.update_from_output(done_so, runner_output))
        self._num_steps += 1
        self._step_time_s += time.perf_counter() - start
        return outputs

    def _launch_and_take_previous(self, scheduler_output: SchedulerOutput) -> tuple[SchedulerOutput, ModelRunnerOutput]:
        """Launch `so`; return the step launched by the previous call, with its ids (waited for)."""
        previous, self._in_flight = self._in_flight, None   # a failing step leaves nothing in flight
        if not scheduler_output.is_empty:
            self._in_flight = scheduler_output, self._timed(self.executor.execute_model_async, scheduler_output)
        if previous is None:
            return SchedulerOutput(), ModelRunnerOutput()
        previous_so, previous_output = previous
        return previous_so, self._timed(previous_output.get)

    def _execute(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        return self._timed(self.executor.execute_model, scheduler_output) if not scheduler_output.is_empty else ModelRunnerOutput()

    def _timed(self, call: Callable, *args):
        """A call into the executor (a step, a launch, or the wait for a launched step's ids), timed."""
        start = time.perf_counter()
        result = call(*args)
        self._executor_time_s += time.perf_counter() - start
        return result

    def close(self) -> None:
        """Stop the executor's tensor-parallel ranks and leave their process group (idempotent)."""
        self.executor.close()

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished_requests()

    def get_num_unfinished_requests(self) -> int:
        return len(self.output_processor.parents)

    def num_admissible(self) -> int:
        """New requests the engine can take now without queueing: free sequence slots and KV blocks."""
        return self.scheduler.num_admissible()

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: Optional[str] = None) -> list[int]:
        """Prompt ids of a chat; `chat_template` (jinja) replaces the tokenizer's own."""
        encoded = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                                     tokenize=True, return_dict=True, chat_template=chat_template)
        return list(encoded["input_ids"])

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def stats(self) -> EngineStats:
        return EngineStats(
            **dataclasses.asdict(self.scheduler.make_stats()),
            num_steps=self._num_steps,
            num_scheduled_tokens=self._num_scheduled_tokens,
            step_time_s=self._step_time_s,
            executor_time_s=self._executor_time_s,
        )
