"""LLM: the offline API, generate() over a list of prompts on one in-process engine.

`with LLM(...) as llm:` (or llm.close()) stops its tensor-parallel ranks when done.
"""
from __future__ import annotations

import itertools
from typing import Optional, Sequence, Union

from qinfer.contracts.engine_config import EngineConfig
from qinfer.engine.llm_engine import LLMEngine
from qinfer.engine.outputs import RequestOutput
from qinfer.errors import InvalidRequestError
from qinfer.sampling_params import SamplingParams

Prompt = Union[str, list[int]]


class LLM:
    def __init__(self, model: str, device: str = "cpu", dtype: str = "auto", max_num_seqs: Optional[int] = None,
                 max_num_batched_tokens: Optional[int] = None, block_size: int = 16,
                 num_kv_blocks: Optional[int] = None, enable_prefix_caching: bool = True, seed: int = 0,
                 **engine_kwargs):
        config = EngineConfig(model=model, device=device, dtype=dtype, max_num_seqs=max_num_seqs,
                              max_num_batched_tokens=max_num_batched_tokens, block_size=block_size,
                              num_kv_blocks=num_kv_blocks, enable_prefix_caching=enable_prefix_caching,
                              seed=seed, **engine_kwargs)
        self.engine = LLMEngine(config)
        self._request_counter = itertools.count()
        self.is_closed = False

    def close(self) -> None:
        """Stop the engine's tensor-parallel ranks and free their process group; safe to call twice.
        Another LLM with tensor_parallel_size > 1 can then be made in this process."""
        self.engine.close()
        self.is_closed = True

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(self, prompts: Union[str, Sequence[Prompt]],
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
                 use_tqdm: bool = True) -> list[RequestOutput]:
        """Complete every prompt; outputs in input order. Bad prompts raise before anything runs."""
        if self.is_closed:
            raise RuntimeError("this LLM is closed: make a new one")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = _params_per_prompt(sampling_params, len(prompts))
        token_ids = [self._validate(prompt, p) for prompt, p in zip(prompts, params)]
        request_ids = []
        for prompt, ids, p in zip(prompts, token_ids, params):
            request_ids.append(f"llm-{next(self._request_counter)}")
            text = prompt if isinstance(prompt, str) else None
            self.engine.add_request(request_ids[-1], text, p, prompt_token_ids=ids)
        finished = self._run_until_finished(set(request_ids), use_tqdm)
        return [finished[request_id] for request_id in request_ids]

    def chat(self, messages: Union[Sequence[dict], Sequence[Sequence[dict]]],
             sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None,
             use_tqdm: bool = True) -> list[RequestOutput]:
        """generate() for conversations: one list of {"role", "content"} messages, or a list of such
        lists, each rendered with the model's chat template (assistant turn opened)."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        prompts = [self.engine.apply_chat_template(list(c)) for c in conversations]
        return self.generate(prompts, sampling_params, use_tqdm)

    def _validate(self, prompt: Prompt, params: SamplingParams) -> list[int]:
        if isinstance(prompt, str):
            return self.engine.validate_request(prompt, params)
        if isinstance(prompt, (list, tuple)):
            return self.engine.validate_request(None, params, prompt_token_ids=prompt)
        raise InvalidRequestError(f"a prompt must be a string or a list of token ids, not {type(prompt).__name__}")

    def _run_until_finished(self, request_ids: set[str], use_tqdm: bool) -> dict[str, RequestOutput]:
        from tqdm.auto import tqdm

        finished: dict[str, RequestOutput] = {}
        with tqdm(total=len(request_ids), desc="Generating", disable=not use_tqdm) as progress:
            while len(finished) < len(request_ids):
                for output in self.engine.step():
                    if output.finished and output.request_id in request_ids:
                        finished[output.request_id] = output
                        progress.update(1)
        return finished


def _params_per_prompt(sampling_params, num_prompts: int) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * num_prompts
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_prompts
    params = list(sampling_params)
    if len(params) != num_prompts:
        raise InvalidRequestError(f"got {len(params)} sampling_params for {num_prompts} prompts")
    return params
