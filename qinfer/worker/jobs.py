"""Turning a delivery into an engine request, and engine outputs into results.

Everything a user can get wrong raises JobRejected with a message for them;
the worker fails that one job and goes on.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pydantic import ValidationError

from qinfer.config import Settings
from qinfer.errors import InvalidRequestError
from qinfer.queue.consumer import Delivery
from qinfer.queue.producer import check_request
from qinfer.schema import MAX_NESTING_DEPTH, Completion, JobRequest, Usage
from qinfer.worker.engine_protocol import Engine


class JobRejected(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass
class InFlight:
    """A job inside the engine, under engine request id `request_id`."""

    delivery: Delivery
    request: JobRequest
    request_id: str
    started_at: float
    run_deadline: float
    first_token_at: Optional[float] = None
    stop_reason: Optional[str] = None    # why the worker aborted it: cancel | timeout | lease_lost | handback


def engine_request_id(d: Delivery) -> str:
    """The engine request id of a delivery: one per attempt, so a retry never meets its predecessor."""
    return f"{d.job_id}:{d.attempts}"


def parse_request(d: Delivery, served_model: str, settings: Settings) -> JobRequest:
    """The delivery's request, checked against every bound a client's submit checks."""
    raw = d.request_json or d.payload
    if raw is None:
        raise JobRejected("malformed_payload", "no job request found: the job hash has no 'request' "
                                               "and the stream entry no 'payload'")
    try:
        req = JobRequest.model_validate(json.loads(raw))
    except json.JSONDecodeError as e:
        raise JobRejected("malformed_payload", f"job payload is not valid JSON: {e}") from None
    except RecursionError:
        raise JobRejected("malformed_payload", "job payload nests too deeply to parse (requests may nest "
                                               f"at most {MAX_NESTING_DEPTH} levels)") from None
    except ValidationError as e:
        raise JobRejected("invalid_request", f"invalid job request: {_summary(e)}") from None
    if req.model != served_model:
        raise JobRejected("unknown_model", f"model {req.model!r} is not served on this queue "
                                           f"(its workers serve {served_model!r})")
    try:
        check_request(req, settings)
    except InvalidRequestError as e:
        raise JobRejected("invalid_request", str(e)) from None
    return req


def _summary(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'request'}: {err['msg']}" for err in e.errors())


def queue_deadline(req: JobRequest, queued_at: float, configured_s: float) -> float:
    return queued_at + min(configured_s, req.queue_timeout_s or configured_s)


def add_to_engine(engine: Engine, req: JobRequest, request_id: str) -> None:
    """engine.add_request for a job; bad prompts and templates become JobRejected."""
    try:
        token_ids = render_chat(engine, req) if req.messages is not None else req.prompt_token_ids
        engine.add_request(request_id, req.prompt, req.sampling, prompt_token_ids=token_ids)
    except InvalidRequestError as e:
        raise JobRejected("invalid_request", str(e)) from None


# For models whose tokenizer has no chat template: ChatML, the format many open models use.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def render_chat(engine: Engine, req: JobRequest) -> list[int]:
    messages = [m.model_dump() for m in req.messages]
    template = None if engine.has_chat_template else FALLBACK_CHAT_TEMPLATE
    try:
        return engine.apply_chat_template(messages, chat_template=template)
    except Exception as e:      # jinja errors: the user's messages cannot be rendered
        raise JobRejected("invalid_request", f"cannot render messages with the model's chat template: {e}")


def completions(output, num_top_logprobs: Optional[int]) -> list[Completion]:
    """num_top_logprobs: the request's SamplingParams.logprobs (each position then holds the
    sampled token and the k most likely)."""
    return [Completion(index=c.index, text=c.text, token_ids=list(c.token_ids), finish_reason=c.finish_reason,
                       logprobs=_logprobs(c.logprobs),
                       num_top_logprobs=num_top_logprobs if c.logprobs is not None else None)
            for c in output.outputs]


def _logprobs(positions) -> Optional[list[dict]]:
    """vLLM-shaped logprobs (list of dict[int, Logprob]) as JSON-ready dicts, token ids as strings."""
    if positions is None:
        return None
    return [None if position is None else
            {str(token_id): {"logprob": lp.logprob, "rank": lp.rank, "decoded_token": lp.decoded_token}
             for token_id, lp in position.items()}
            for position in positions]


def prompt_logprobs(output) -> Optional[list]:
    return _logprobs(output.prompt_logprobs)


def usage(output) -> Usage:
    prompt = len(output.prompt_token_ids)
    completion = sum(len(c.token_ids) for c in output.outputs)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
