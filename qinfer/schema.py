"""Wire types of the job queue: what producers send and what workers write back.

Light module (pydantic only): a web app can build and read jobs without torch.
"""
from __future__ import annotations

import enum
import hashlib
import json
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from qinfer.signing import SECRET_PREFIX, parse_secrets
from qinfer.sampling_params import SamplingParams

# Bounds every request meets before it is written (the worker checks them again: raw producers
# bypass the client). Deeper nesting breaks JSON tools (Python's json raises RecursionError near
# 1,000 levels); a lone UTF-16 surrogate cannot be encoded as UTF-8 at all.
MAX_NESTING_DEPTH = 32              # levels of JSON objects / arrays in any field
MAX_METADATA_BYTES = 64 * 1024      # metadata as JSON


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


TERMINAL_STATUSES = frozenset(s.value for s in JobStatus if s.is_terminal)


class ChatMessage(BaseModel):
    """One chat turn; extra keys (name, ...) reach the chat template untouched."""

    model_config = ConfigDict(extra="allow")
    role: str = Field(min_length=1, description="system | user | assistant | ... (the template decides)")
    content: str


class JobRequest(BaseModel):
    """One generation job. Exactly one of prompt, prompt_token_ids, messages."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, pattern=r"^[^\s{}:]+$",
                       description="Served model name (a worker's --served-model-name).")
    prompt: Optional[str] = None
    prompt_token_ids: Optional[list[int]] = None
    messages: Optional[list[ChatMessage]] = Field(None, min_length=1, description=(
        "Chat, rendered by the worker with the model's chat template (ChatML if it has none)."))
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    priority: int = Field(0, ge=0, description="Higher runs first; 0..QINFER_MAX_PRIORITY.")
    callback_url: Optional[str] = Field(None, description="Webhook POSTed on the terminal state.")
    # repr=False keeps it out of logs; JobResult and the webhook body never carry it
    callback_secret: Optional[str] = Field(None, repr=False,
                                           description="whsec_ secret that also signs this job's webhook.")
    idempotency_key: Optional[str] = Field(None, min_length=1, max_length=256)
    metadata: dict[str, Any] = Field(default_factory=dict, description="Returned untouched.")
    queue_timeout_s: Optional[float] = Field(None, gt=0, description="May only shorten the configured one.")
    run_timeout_s: Optional[float] = Field(None, gt=0, description="May only shorten the configured one.")
    stream: bool = Field(False, description="Append token deltas to the job's events stream.")
    affinity_key: Optional[str] = Field(None, min_length=1, max_length=1024,
                                        description="Jobs with one key go, by preference, to one worker "
                                                    "(default: the system message or the prompt's start).")

    @model_validator(mode="after")
    def _one_prompt(self) -> "JobRequest":
        given = [n for n in ("prompt", "prompt_token_ids", "messages") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of prompt, prompt_token_ids, messages "
                             f"(got {', '.join(given) or 'none'})")
        return self

    @field_validator("callback_secret")
    @classmethod
    def _whsec(cls, value: Optional[str]) -> Optional[str]:
        # refused at submit: a secret the callbacks worker cannot use would fail every delivery
        if value is not None and not (value.startswith(SECRET_PREFIX) and any(parse_secrets([value]))):
            raise ValueError("callback_secret must be 'whsec_' + base64 of the key bytes "
                             "(qinfer.callbacks.generate_secret())")
        return value

    def wire_problem(self) -> Optional[str]:
        """Why this request cannot travel as JSON (invalid Unicode, too deep, metadata too big), or None."""
        for name, value in self:
            problem = _container_problem(value)
            if problem:
                return f"{name}: {problem}"
        size = len(json.dumps(self.metadata))
        if size > MAX_METADATA_BYTES:
            return f"metadata: {size} bytes of JSON, above the limit of {MAX_METADATA_BYTES}"
        return None

    def estimated_tokens(self) -> int:
        """Admission-control size: prompt (ids exact, text ~4 bytes/token) + max_tokens per completion."""
        if self.prompt_token_ids is not None:
            prompt = len(self.prompt_token_ids)
        else:
            text = self.prompt if self.prompt is not None else "".join(m.content for m in self.messages)
            prompt = len(text.encode()) // 4 + 1
        return prompt + self.sampling.max_tokens * self.sampling.n

    def fingerprint(self) -> str:
        """Digest of everything but the idempotency key: same key + other request is a conflict."""
        body = self.model_dump(mode="json", exclude={"idempotency_key"})
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _container_problem(value: Any) -> Optional[str]:
    """Walks `value` without recursion (it may be nested far too deep for that)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, BaseModel):
            stack.extend((v, depth) for _, v in item)
        elif isinstance(item, str):
            if not is_valid_unicode(item):
                return ("text is not valid Unicode (a lone UTF-16 surrogate such as half an emoji, "
                        "or bytes that are not UTF-8); send well-formed UTF-8")
        elif isinstance(item, (dict, list, tuple)):
            if depth >= MAX_NESTING_DEPTH:
                return f"nested deeper than {MAX_NESTING_DEPTH} levels of objects / arrays"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class Timings(BaseModel):
    """Unix timestamps (seconds) of the job's last attempt."""

    queued_at: Optional[float] = None
    started_at: Optional[float] = None
    first_token_at: Optional[float] = None
    finished_at: Optional[float] = None


class JobError(BaseModel):
    code: str          # invalid_request | malformed_payload | unknown_model | dead_letter | run_timeout | queue_timeout | engine_error
    message: str       # written for the user who sent the job


class TokenLogprob(BaseModel):
    """One token's entry at one position (vLLM's Logprob): raw-distribution logprob, rank in the
    vocabulary (1 = most likely; the top-k hold 1..k), the token decoded alone."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


# One position: token id (a JSON object key, so a string) -> its entry; the token at the position
# (sampled, or the prompt's) and the top-k (SamplingParams.logprobs / prompt_logprobs).
PositionLogprobs = dict[str, TokenLogprob]


class Completion(BaseModel):
    index: int = 0
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    finish_reason: Optional[str] = None
    logprobs: Optional[list[PositionLogprobs]] = None      # one per token_ids entry
    num_top_logprobs: Optional[int] = None   # with logprobs: the k asked; a position holds the token and the top k


class JobResult(BaseModel):
    """What Client.get / wait return. text/token_ids/finish_reason are completion 0's."""

    id: str
    status: JobStatus
    model: Optional[str] = None
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
    finish_reason: Optional[str] = None
    logprobs: Optional[list[PositionLogprobs]] = None
    prompt_logprobs: Optional[list[Optional[PositionLogprobs]]] = None   # one per prompt token, the first None
    outputs: list[Completion] = Field(default_factory=list)   # all n completions
    error: Optional[JobError] = None
    usage: Usage = Field(default_factory=Usage)
    timings: Timings = Field(default_factory=Timings)
    attempts: int = 0          # deliveries to a worker (> 1 after a crash or hand-back)
    duplicates: int = 0        # extra runs that finished after the result was already written
    worker: Optional[str] = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal


class StreamDelta(BaseModel):
    """One entry of a job's events stream: new text of completion `index`."""

    index: int = 0
    text: str = ""
    token_ids: list[int] = Field(default_factory=list)
