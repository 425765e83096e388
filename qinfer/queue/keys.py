"""Every Redis key qinfer uses, named in one place.

All keys share one hash tag, the prefix in braces (default "{qinfer}:"), so the
multi-key atomic steps (result + ack + done list + events + callback outbox)
are legal on Redis Cluster: one deployment lives on one slot. Run several
prefixes to spread load across a cluster.
"""
from __future__ import annotations

from dataclasses import dataclass

CONSUMER_GROUP = "workers"


@dataclass(frozen=True)
class Keys:
    prefix: str = "qinfer"

    @property
    def _p(self) -> str:
        return "{" + self.prefix.strip("{}:") + "}:"

    # --- jobs ---
    def job(self, job_id: str) -> str:            # hash: request, status, timestamps, result/error
        return f"{self._p}job:{job_id}"

    def job_events(self, job_id: str) -> str:     # stream: token deltas, then an "end" entry
        return f"{self._p}job:{job_id}:events"

    def job_done(self, job_id: str) -> str:       # list: one push on a terminal state (BLPOP wakes waiters)
        return f"{self._p}job:{job_id}:done"

    def job_cancel(self, job_id: str) -> str:     # string flag set by Client.cancel
        return f"{self._p}job:{job_id}:cancel"

    def idempotency(self, model: str, key: str) -> str:   # string: job id for (model, idempotency key)
        return f"{self._p}idem:{model}:{key}"

    # --- queues, per served model ---
    def queue(self, model: str, priority: int) -> str:    # stream of job ids, group "workers"
        return f"{self._p}q:{model}:{priority}"

    def priorities(self, model: str) -> str:      # sorted set of priorities that have a stream
        return f"{self._p}q:{model}:priorities"

    def queued_counts(self, model: str) -> str:   # hash: jobs, tokens (admission control)
        return f"{self._p}q:{model}:queued"

    def dead_letters(self, model: str) -> str:    # stream: jobs that exhausted max_attempts
        return f"{self._p}dlq:{model}"

    def models(self) -> str:                      # set of model names that have queues
        return f"{self._p}models"

    def models_seen(self) -> str:                 # hash: served model name -> last worker heartbeat (unix s)
        return f"{self._p}models:seen"

    # --- workers ---
    def worker(self, name: str) -> str:           # hash with TTL: heartbeat / health
        return f"{self._p}worker:{name}"

    def workers(self) -> str:                     # sorted set: worker name -> last heartbeat
        return f"{self._p}workers"

    def cancel_channel(self) -> str:              # pub/sub: job ids being cancelled
        return f"{self._p}cancel"

    # --- callbacks (webhook delivery) ---
    def callback_outbox(self) -> str:             # stream: job ids awaiting a webhook delivery
        return f"{self._p}callbacks:outbox"

    def callback_dead_letters(self) -> str:       # list: deliveries that exhausted their retries
        return f"{self._p}callbacks:dlq"

    def callback_retries(self) -> str:            # sorted set: job id -> when its next attempt is due
        return f"{self._p}callbacks:retries"

    def celery_prefix(self) -> str:               # prefix of the Celery broker's own keys (kombu)
        return f"{self._p}celery:"
