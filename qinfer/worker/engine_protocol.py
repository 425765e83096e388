"""What the worker needs of an engine: the part of LLMEngine's interface it calls.

The worker types against this Protocol, so it imports no engine module (and a test or
a remote engine can stand in for LLMEngine).
"""
from __future__ import annotations

from typing import Iterable, Optional, Protocol, Union

from qinfer.sampling_params import SamplingParams


class EngineStatsView(Protocol):
    kv_cache_usage: float
    prefix_cache_queries: int
    prefix_cache_hits: int


class Engine(Protocol):
    def add_request(self, request_id: str, prompt: Optional[str] = None,
                    sampling_params: Optional[SamplingParams] = None,
                    prompt_token_ids: Optional[list[int]] = None) -> None: ...

    def abort_request(self, request_id: Union[str, Iterable[str]]) -> None: ...

    def step(self) -> list: ...          # list[RequestOutput]

    def has_unfinished_requests(self) -> bool: ...

    def num_admissible(self) -> int: ...

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                            chat_template: Optional[str] = None) -> list[int]: ...

    @property
    def has_chat_template(self) -> bool: ...

    @property
    def stats(self) -> EngineStatsView: ...
