"""Executor: what the engine talks to. The driver's ModelRunner in this process and, for
tensor_parallel_size N > 1, N - 1 follower ranks in spawned processes (multiproc_executor).

Every step the plan (the SchedulerOutput, already a delta) goes to the followers
before the driver runs it, so all ranks enter the layers' collectives together.
Only the driver samples. The ids it sampled ride along with the next step's
plan, and each follower appends them before applying that plan: one copy of the
ids decides every rank's tokens, so ranks cannot drift apart even where their
logits differ in the last bit (an all-reduce is not bitwise identical across
ranks in every algorithm), and the followers skip the sampler.
"""
from __future__ import annotations

from typing import Optional

from transformers import AutoConfig

from qinfer.distributed.validation import validate_tensor_parallel
from qinfer.contracts.engine_config import EngineConfig
from qinfer.contracts.scheduler_output import SchedulerOutput
from qinfer.executor.model_runner import ModelRunner
from qinfer.executor.multiproc_executor import FollowerRanks
from qinfer.contracts.runner_output import AsyncModelRunnerOutput, ModelRunnerOutput


class Executor:
    def __init__(self, config: EngineConfig):
        self.config = config
        tp_size = config.tensor_parallel_size
        validate_tensor_parallel(AutoConfig.from_pretrained(config.model), tp_size, config.device)
        self.followers: Optional[FollowerRanks] = FollowerRanks(config) if tp_size > 1 else None
        try:
            self.runner = ModelRunner(config, rank=0, world_size=tp_size)
        except BaseException:
            self.close()   # the followers would wait for a driver that never comes
            raise
        self._unsent_sampled_ids: list[int] = []   # the driver's last sampled ids, for the followers

    @property
    def hf_config(self):
        return self.runner.hf_config

    @property
    def max_model_len(self) -> int:
        return self.runner.max_model_len

    @property
    def sliding_window(self) -> Optional[int]:
        return self.runner.sliding_window

    def determine_num_kv_blocks(self) -> int:
        """The smallest count any rank can hold (the block tables are the same on every rank)."""
        self._call_followers("determine_num_kv_blocks")
        num_blocks = self.runner.determine_num_kv_blocks()
        return min([num_blocks, *self._follower_replies()])

    def init_kv_cache(self, num_blocks: int) -> None:
        self._call_followers("init_kv_cache", num_blocks)
        self.runner.init_kv_cache(num_blocks)
        self._follower_replies()   # every rank has its cache (and graphs) before the first step

    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        if self.followers is None:
            return self.runner.execute_model(scheduler_output)
        self.followers.step(scheduler_output, self._unsent_sampled_ids)
        self._unsent_sampled_ids = []   # if this step fails on the driver, the followers must notice
        output = self.runner.execute_model(scheduler_output)
        self._unsent_sampled_ids = [ids[0] for ids in output.sampled_token_ids if ids]
        return output

    def execute_model_async(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        """execute_model, returning before the sampled ids reach the host (async scheduling).

        One rank only: followers get the driver's ids on the host with the next plan, which
        async scheduling sends before those ids are there.
        """
        if self.followers is not None:
            raise RuntimeError("async scheduling runs with tensor_parallel_size 1 only "
                               "(the engine steps synchronously with more ranks)")
        return self.runner.execute_model_async(scheduler_output)

    def close(self) -> None:
        if self.followers is not None:
            self.followers.close()

    def _call_followers(self, method: str, *args) -> None:
        if self.followers is not None:
            self.followers.call(method, *args)

    def _follower_replies(self) -> list:
        return self.followers.replies() if self.followers is not None else []
