"""The producer side of the queue, without I/O: what Client and AsyncClient send.

Both clients call these builders and run the scripts on their own connection,
so the sync and asyncio clients cannot drift apart.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Union

from qinfer.ssrf import Allowlist, check_callback_url
from qinfer.config import Settings
from qinfer.errors import IdempotencyConflictError, InvalidRequestError, QueueFullError
from qinfer.queue.keys import CONSUMER_GROUP, Keys
from qinfer.schema import JobRequest

RequestLike = Union[JobRequest, dict]


def new_job_id() -> str:
    return uuid.uuid4().hex      # 122 random bits: unguessable


def as_request(req: RequestLike, settings: Settings) -> JobRequest:
    """A request checked for this deployment, before anything is written (submit_many checks
    every request first, so one refused request leaves the whole batch unwritten)."""
    req = req if isinstance(req, JobRequest) else JobRequest.model_validate(req)
    check_request(req, settings)
    if req.callback_url is not None:
        # a literal refused address (or scheme) fails here; the callbacks worker checks every
        # address again when it delivers (raw jobs included), with its own allowlist
        check_callback_url(req.callback_url, Allowlist.parse(settings.callback_allow))
    return req


def check_request(req: JobRequest, settings: Settings) -> None:
    """Every bound a request must meet in this queue, or InvalidRequestError saying which.
    The client checks before writing; the worker checks again (raw producers bypass the client)."""
    problem = req.wire_problem()
    if problem:
        raise InvalidRequestError(f"invalid job request: {problem}")
    if req.priority > settings.max_priority:
        raise InvalidRequestError(f"priority {req.priority} is above the maximum {settings.max_priority} "
                                  "(QINFER_MAX_PRIORITY)")
    tokens = req.estimated_tokens()
    if tokens > settings.max_queued_tokens:
        # not QueueFullError: no amount of waiting admits it, so a client retrying on "full" would spin
        raise InvalidRequestError(
            f"this job alone is about {tokens} tokens (prompt + max_tokens * n), above the queue's bound "
            f"of {settings.max_queued_tokens} (QINFER_MAX_QUEUED_TOKENS): lower max_tokens or n")


def submit_call(keys: Keys, settings: Settings, req: JobRequest) -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of scripts.SUBMIT for one request checked by as_request."""
    job_id = new_job_id()
    idem = req.idempotency_key
    call_keys = [keys.job(job_id), keys.queue(req.model, req.priority), keys.queued_counts(req.model),
                 keys.models(), keys.idempotency(req.model, idem or "")]
    args = [job_id, req.model_dump_json(), req.estimated_tokens(), settings.max_queued_jobs,
            settings.max_queued_tokens, f"{time.time():.6f}", req.model, req.priority,
            req.fingerprint() if idem else "", settings.result_ttl_seconds, CONSUMER_GROUP]
    return call_keys, args


def parse_submit_reply(reply: list, req: JobRequest, settings: Settings) -> str:
    """The job id, or the typed refusal."""
    kind, value = (v.decode() if isinstance(v, bytes) else v for v in reply)
    if kind in ("ok", "duplicate"):
        return value
    if kind == "conflict":
        raise IdempotencyConflictError(
            f"idempotency key {req.idempotency_key!r} was already used for a different request (job {value})")
    bound = "jobs" if kind == "full_jobs" else "tokens"
    limit = settings.max_queued_jobs if bound == "jobs" else settings.max_queued_tokens
    raise QueueFullError(f"queue of model {req.model!r} is full: {value} {bound} already queued, "
                         f"limit {limit} (QINFER_MAX_QUEUED_{bound.upper()}); nothing was written")


def cancel_call(keys: Keys, settings: Settings, job_id: str, model: str) -> tuple[list[str], list[Any]]:
    call_keys = [keys.job(job_id), keys.job_cancel(job_id), keys.job_done(job_id),
                 keys.job_events(job_id), keys.queued_counts(model)]
    return call_keys, [f"{time.time():.6f}", settings.result_ttl_seconds, keys.cancel_channel(), job_id]


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
