"""OpenAI request bodies of /v1/chat/completions and /v1/completions, and the fleet job
each becomes. Unknown OpenAI fields are ignored; fields that would change the answer
in a way the fleet cannot honour (tools, logit_bias, ...) are refused with a 400."""
from __future__ import annotations

from typing import Any, ClassVar, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from qinfer.config import Settings
from qinfer.schema import JobRequest

API_KEY_METADATA = "api_key_name"     # metadata key naming the API key a job came with


class StreamOptions(BaseModel):
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """Fields both endpoints share: OpenAI's, then vLLM's sampling extras, then qinfer's."""

    model_config = ConfigDict(extra="allow")
    refused: ClassVar[tuple[str, ...]] = ("logit_bias", "best_of")

    model: str = Field(min_length=1)
    n: int = 1
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    max_tokens: Optional[int] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    # vLLM's extra sampling fields
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    repetition_penalty: Optional[float] = None
    min_tokens: Optional[int] = None
    ignore_eos: Optional[bool] = None
    stop_token_ids: Optional[list[int]] = None
    # qinfer's: where the OpenAI schema has none
    priority: Optional[int] = Field(None, description="Job priority; default QINFER_GATEWAY_PRIORITY.")
    metadata: Optional[dict[str, Any]] = None
    callback_url: Optional[str] = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        given = [name for name in self.refused if (self.model_extra or {}).get(name) not in (None, False)]
        if given:
            raise ValueError(f"{given[0]} is not supported by this gateway")
        return self

    def _sampling(self, settings: Settings, max_tokens: Optional[int], logprobs: Optional[int]) -> dict:
        shared = ("n", "temperature", "top_p", "stop", "seed", "presence_penalty", "frequency_penalty",
                  "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids")
        sampling = {name: getattr(self, name) for name in shared if getattr(self, name) is not None}
        sampling["max_tokens"] = max_tokens or settings.gateway_default_max_tokens
        if logprobs is not None:
            sampling["logprobs"] = logprobs
        return sampling

    def _job(self, settings: Settings, key_name: str, prompt: dict, sampling: dict, **overrides) -> JobRequest:
        metadata = dict(self.metadata or {})
        if key_name:
            metadata[API_KEY_METADATA] = key_name
        fields = {"model": self.model, **prompt, "sampling": sampling, "metadata": metadata,
                  "priority": settings.gateway_priority if self.priority is None else self.priority,
                  "callback_url": self.callback_url, "stream": self.stream, **overrides}
        return JobRequest.model_validate(fields)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Union[str, list[ContentPart], None] = None
    name: Optional[str] = None

    @model_validator(mode="after")
    def _text_parts_only(self):
        if isinstance(self.content, list) and any(part.type != "text" for part in self.content):
            raise ValueError("only text content parts are supported (no images, audio or files)")
        return self

    def as_job_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text or "" for part in content)
        message = {"role": self.role, "content": content or ""}
        if self.name is not None:
            message["name"] = self.name
        return message


class ChatCompletionRequest(_GenerationRequest):
    refused: ClassVar[tuple[str, ...]] = ("logit_bias", "tools", "tool_choice", "functions",
                                          "function_call", "audio", "prediction")

    messages: list[ChatMessageIn] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=20)
    max_completion_tokens: Optional[int] = None
    response_format: Optional[dict[str, Any]] = None

    @model_validator(mode="after")
    def _text_only(self):
        if self.response_format and self.response_format.get("type") != "text":
            raise ValueError("response_format other than {'type': 'text'} is not supported")
        if self.stream and self.logprobs:
            raise ValueError("logprobs are not streamed: ask without stream to get them")
        return self

    def to_job(self, settings: Settings, key_name: str, **overrides) -> JobRequest:
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        sampling = self._sampling(settings, self.max_completion_tokens or self.max_tokens, logprobs)
        messages = {"messages": [m.as_job_message() for m in self.messages]}
        return self._job(settings, key_name, messages, sampling, **overrides)


class CompletionRequest(_GenerationRequest):
    refused: ClassVar[tuple[str, ...]] = ("logit_bias", "best_of", "echo", "suffix")

    prompt: Union[str, list[int], list[str], list[list[int]]]
    logprobs: Optional[int] = Field(None, ge=0, le=20)

    @model_validator(mode="after")
    def _one_prompt(self):
        if self.stream and self.logprobs is not None:
            raise ValueError("logprobs are not streamed: ask without stream to get them")
        if self._is_prompt_list() and len(self.prompt) != 1:
            raise ValueError("send one prompt per request (or many through the Batch API)")
        return self

    def _is_prompt_list(self) -> bool:
        """A list of prompts (strings or token id lists), not one prompt of token ids."""
        return isinstance(self.prompt, list) and bool(self.prompt) and isinstance(self.prompt[0], (str, list))

    def to_job(self, settings: Settings, key_name: str, **overrides) -> JobRequest:
        prompt = self.prompt[0] if self._is_prompt_list() else self.prompt
        prompt_field = {"prompt": prompt} if isinstance(prompt, str) else {"prompt_token_ids": prompt}
        sampling = self._sampling(settings, self.max_tokens, self.logprobs)
        return self._job(settings, key_name, prompt_field, sampling, **overrides)
