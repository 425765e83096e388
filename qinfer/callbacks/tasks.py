"""The Celery task that makes one delivery attempt and records what happened.

State lives in the job hash (callback: pending | delivered | failed,
callback_attempts, callback_last_status, callback_last_error), or for a batch's
webhook in the batch hash; a retry is a due time in the retries sorted set, not
a Celery countdown (see outbox.py).
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from functools import lru_cache

import redis
from redis.exceptions import RedisError

from qinfer import metrics
from qinfer.callbacks.app import app
from qinfer.callbacks.delivery import DELIVERED, REFUSED, RETRY, AttemptResult, post_webhook
from qinfer.callbacks.outbox import schedule_retry
from qinfer.callbacks.payload import WebhookDelivery, build_delivery
from qinfer.signing import parse_secrets, sign
from qinfer.ssrf import Allowlist
from qinfer.config import Settings
from qinfer.queue.connection import connect
from qinfer.queue.keys import Keys
from qinfer.queue.outage import connection_options

log = logging.getLogger(__name__)

JITTER = 0.2                      # each delay is scaled by a random factor in [0.8, 1.2]
MAX_RETRY_AFTER_S = 24 * 3600     # a receiver's Retry-After cannot park a delivery longer


@dataclass(frozen=True)
class Runtime:
    """What a delivery needs, built once per process from the settings."""
    client: redis.Redis
    keys: Keys
    secrets: tuple[str, ...]
    allow: Allowlist
    retry_delays: tuple[float, ...]
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> "Runtime":
        secrets = tuple((settings.webhook_secret or "").replace(",", " ").split())
        parse_secrets(secrets)   # fail at start-up, not at the first delivery
        client = connect(settings.redis_url, decode_responses=True, **connection_options(settings))
        return cls(client,
                   Keys(settings.key_prefix), secrets, Allowlist.parse(settings.callback_allow),
                   tuple(settings.callback_retry_delays), settings.callback_timeout_s)


@lru_cache(maxsize=1)
def runtime() -> Runtime:
    return Runtime.from_settings(app.conf.qinfer_settings)


# Redis errors (the job hash unreadable) are retried by Celery with a short backoff, well
# inside the visibility timeout; every delivery error is handled below and never raises.
@app.task(name="qinfer.callbacks.deliver", autoretry_for=(RedisError,), retry_backoff=True,
          retry_backoff_max=30, max_retries=None)
def deliver(job_id: str) -> str:
    return attempt_delivery(runtime(), job_id)


def attempt_delivery(rt: Runtime, job_id: str) -> str:
    """POST the job's webhook once; returns the step taken (delivered, retry, gone, ...)."""
    fields = rt.client.hgetall(rt.keys.callback_subject(job_id))
    if not fields:
        return _dead_letter_missing(rt, job_id)
    delivery = build_delivery(job_id, fields)
    if delivery is None or fields.get("callback") != "pending":
        return "skipped"   # no callback, or a duplicate message of a finished delivery
    result = _post(rt, delivery)
    metrics.callback_attempts.labels(result.status_class).inc()
    metrics.callback_attempt_duration.observe(result.duration_s)
    return _record(rt, delivery, fields, result)


def _post(rt: Runtime, delivery: WebhookDelivery) -> AttemptResult:
    secrets = rt.secrets + ((delivery.job_secret,) if delivery.job_secret else ())
    try:
        headers = sign(secrets, delivery.webhook_id, delivery.body)
    except ValueError as exc:   # no secret at all, or a malformed per-job secret: cannot sign
        return AttemptResult(REFUSED, error=str(exc))
    return post_webhook(delivery.url, headers, delivery.body, rt.timeout_s, rt.allow)


def _record(rt: Runtime, delivery: WebhookDelivery, fields: dict, result: AttemptResult) -> str:
    attempts = int(fields.get("callback_attempts") or 0) + 1
    state = {"callback_attempts": attempts, "callback_last_status": result.status or "",
             "callback_last_error": result.error}
    pipe = rt.client.pipeline(transaction=True)
    if result.outcome == DELIVERED:
        step = state["callback"] = "delivered"
        _observe_latency(fields)
    elif result.outcome == RETRY and attempts <= len(rt.retry_delays):
        step = "retry"
        delay = next_delay(rt.retry_delays[attempts - 1], result.retry_after_s)
        schedule_retry(pipe, rt.keys, delivery.job_id, time.time() + delay)
    else:
        step = "exhausted" if result.outcome == RETRY else result.outcome
        state["callback"] = "failed"
        pipe.lpush(rt.keys.callback_dead_letters(), _dead_letter_entry(delivery, attempts, result, step))
    pipe.hset(rt.keys.callback_subject(delivery.job_id), mapping=state)
    pipe.execute()
    if step != "retry":
        metrics.callback_deliveries.labels(step).inc()
    log.info("callback job=%s attempt=%d step=%s status=%s %s", delivery.job_id, attempts, step,
             result.status, result.error)
    return step


def next_delay(base_s: float, retry_after_s: float | None = None) -> float:
    """Scheduled delay with jitter (so failed receivers are not hit in lockstep), but
    never sooner than a Retry-After the receiver sent."""
    jittered = base_s * random.uniform(1 - JITTER, 1 + JITTER)
    if retry_after_s is None:
        return jittered
    return max(jittered, min(retry_after_s, MAX_RETRY_AFTER_S))


def _observe_latency(fields: dict) -> None:
    enqueued_at = fields.get("callback_enqueued_at")
    if enqueued_at:
        metrics.callback_delivery_latency.observe(max(0.0, time.time() - float(enqueued_at)))


def _dead_letter_entry(delivery: WebhookDelivery, attempts: int, result: AttemptResult, reason: str) -> str:
    return json.dumps({"job_id": delivery.job_id, "url": delivery.url, "webhook_id": delivery.webhook_id,
                       "reason": reason, "attempts": attempts, "last_status": result.status,
                       "error": result.error, "failed_at": time.time()})


def _dead_letter_missing(rt: Runtime, job_id: str) -> str:
    # the job hash expired (result TTL shorter than the retry schedule): nothing left to send
    entry = json.dumps({"job_id": job_id, "reason": "job_missing", "error": "job hash not found",
                        "failed_at": time.time()})
    rt.client.lpush(rt.keys.callback_dead_letters(), entry)
    metrics.callback_deliveries.labels("job_missing").inc()
    return "job_missing"

