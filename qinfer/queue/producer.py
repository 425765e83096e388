"""The producer side of the queue, without I/O: what Client and AsyncClient send.

Both clients call these builders and run the scripts on their own connection,
so the sync and asyncio clients cannot drift apart.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Optional, Union

from qinfer.ssrf import Allowlist, check_callback_url
from qinfer.config import Settings
from qinfer.errors import (DurabilityError, IdempotencyConflictError, InvalidRequestError, QueueFullError,
                           UnknownModelError)
from qinfer.queue.keys import CONSUMER_GROUP, Keys, model_tag
from qinfer.queue.lanes import job_lane
from qinfer.schema import JobRequest

RequestLike = Union[JobRequest, dict]


def new_job_id(model: str) -> str:
    """`<model tag>.<uuid4>`: the tag puts every key of the job in its model's Redis Cluster
    slot (queue/keys.py); the uuid's 122 random bits make it unguessable."""
    return f"{model_tag(model)}.{uuid.uuid4().hex}"


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
    job_id = new_job_id(req.model)
    idem = req.idempotency_key
    lane = job_lane(req, job_id, affinity=settings.affinity_routing, prefix_chars=settings.affinity_prefix_chars)
    call_keys = [keys.job(job_id), keys.queue(req.model, req.priority, lane), keys.queued_counts(req.model),
                 keys.idempotency(req.model, idem or "")]
    args = [job_id, req.model_dump_json(), req.estimated_tokens(), settings.max_queued_jobs,
            settings.max_queued_tokens, f"{time.time():.6f}", req.model, req.priority,
            req.fingerprint() if idem else "", settings.result_ttl_seconds, CONSUMER_GROUP,
            settings.heartbeat_ttl_s if settings.require_live_model else ""]
    return call_keys, args


def parse_submit_reply(reply: list, req: JobRequest, settings: Settings) -> str:
    """The job id, or the typed refusal."""
    kind, value = (v.decode() if isinstance(v, bytes) else v for v in reply)
    if kind in ("ok", "duplicate"):
        return value
    if kind == "unknown_model":
        raise unknown_model_error(req.model, value.split())
    if kind == "conflict":
        raise IdempotencyConflictError(
            f"idempotency key {req.idempotency_key!r} was already used for a different request (job {value})")
    bound = "jobs" if kind == "full_jobs" else "tokens"
    limit = settings.max_queued_jobs if bound == "jobs" else settings.max_queued_tokens
    raise QueueFullError(f"queue of model {req.model!r} is full: {value} {bound} already queued, "
                         f"limit {limit} (QINFER_MAX_QUEUED_{bound.upper()}); nothing was written")


def unknown_model_error(model: str, served: list[str]) -> UnknownModelError:
    now = ", ".join(repr(m) for m in sorted(served)) or "none"
    return UnknownModelError(
        f"no live worker serves model {model!r} (served now: {now}); nothing was written. Start a worker "
        "for it, or submit ahead of the workers with QINFER_REQUIRE_LIVE_MODEL=0 / "
        "Client(require_live_model=False)")


def check_live_models(reqs: list[JobRequest], seen: dict, settings: Settings) -> None:
    """submit_many's check before its first write: every model has a live worker. `seen`: the
    models-seen hash (model -> last heartbeat)."""
    if not settings.require_live_model:
        return
    now = time.time()
    live = [m for m, at in ((_text(k), float(v)) for k, v in seen.items()) if now - at <= settings.heartbeat_ttl_s]
    missing = sorted({r.model for r in reqs} - set(live))
    if missing:
        raise unknown_model_error(missing[0], live)


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else v


def wait_aof_problem(info: dict, settings: Settings) -> Optional[str]:
    """Why this Redis cannot confirm fsyncs for QINFER_SUBMIT_WAIT_AOF (from INFO), or None."""
    version = tuple(int(x) for x in str(info.get("redis_version", "0")).split(".")[:2])
    if version < (7, 2):
        return (f"QINFER_SUBMIT_WAIT_AOF needs Redis >= 7.2 (WAITAOF); this server is "
                f"{info.get('redis_version')}: upgrade it, or unset QINFER_SUBMIT_WAIT_AOF")
    if str(info.get("aof_enabled")) != "1":
        return ("QINFER_SUBMIT_WAIT_AOF needs the server's append-only file: set `appendonly yes` "
                "(docs/queue.md, Durability), or unset QINFER_SUBMIT_WAIT_AOF")
    return None


def wait_aof_command(settings: Settings) -> tuple:
    """WAITAOF for the writes of this connection: the local AOF and the configured replicas."""
    return "WAITAOF", 1, settings.submit_wait_aof_replicas, int(settings.redis_timeout_s * 1000)


def check_wait_aof_reply(reply: list, settings: Settings, job_ids: list[str]) -> None:
    num_local, num_replicas = (int(x) for x in reply)
    if num_local < 1 or num_replicas < settings.submit_wait_aof_replicas:
        raise DurabilityError(
            f"Redis did not confirm the fsync within {settings.redis_timeout_s:g}s (local AOF: {num_local}, "
            f"replicas: {num_replicas} of {settings.submit_wait_aof_replicas}); the jobs were enqueued and "
            f"may run, but could be lost if Redis fails now: {', '.join(job_ids)}", tuple(job_ids))


def cancel_call(keys: Keys, settings: Settings, job_id: str, model: str) -> tuple[list[str], list[Any]]:
    call_keys = [keys.job(job_id), keys.job_cancel(job_id), keys.job_done(job_id),
                 keys.job_events(job_id), keys.queued_counts(model)]
    return call_keys, [f"{time.time():.6f}", settings.result_ttl_seconds, keys.cancel_channel(), job_id]


def chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]
