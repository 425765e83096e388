"""Result writes: one round trip per engine step for deltas, one MULTI/EXEC for terminals.

A terminal write (result, XACK, done-list push, events end, callback outbox)
happens once per job: the job hashes are WATCHed and a job already terminal
(another worker finished a reclaimed copy first) only counts a duplicate.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

import redis

from qinfer.config import Settings
from qinfer.queue import scripts
from qinfer.queue.connection import register_script
from qinfer.queue.consumer import Delivery, as_str
from qinfer.queue.keys import CONSUMER_GROUP, Keys
from qinfer.schema import TERMINAL_STATUSES

log = logging.getLogger(__name__)
_MAX_WATCH_RETRIES = 16


@dataclass
class Final:
    """The terminal state of one delivery."""

    delivery: Delivery
    status: str
    fields: dict = field(default_factory=dict)   # job hash fields: output, error, timings, ...
    dead_letter_reason: Optional[str] = None     # set: also append to the dead-letter stream
    model: Optional[str] = None                  # the dead-letter stream's model


def enqueue_callback(pipe: redis.client.Pipeline, keys: Keys, job_id: str) -> None:
    """Record "deliver this job's (or batch's) webhook" in the callbacks outbox, on the caller's MULTI/EXEC:
    no result is written without its delivery queued, nor the reverse (the relay in the
    callbacks worker turns outbox entries into Celery tasks)."""
    pipe.hset(keys.callback_subject(job_id), mapping={
        "callback": "pending", "callback_attempts": 0, "callback_enqueued_at": time.time()})
    pipe.xadd(keys.callback_outbox(job_id), {"job_id": job_id})


class ResultWriter:
    def __init__(self, r: redis.Redis, keys: Keys, worker: str, settings: Settings):
        self.redis, self.keys, self.worker, self.settings = r, keys, worker, settings
        self._statuses = register_script(r, scripts.STATUSES)
        self._finish = register_script(r, scripts.FINISH)

    def flush(self, deltas: list[tuple[str, dict]], finals: list[Final]) -> list[bool]:
        """Write one step's deltas and terminals; per final, True if it was written,
        False if the job was already terminal (a duplicate run)."""
        if not finals:
            if deltas:
                pipe = self.redis.pipeline(transaction=False)
                self._deltas(pipe, deltas)
                pipe.execute()
            return []
        return self._transaction(deltas, finals)

    def ack_skipped(self, deliveries: list[Delivery]) -> None:
        """Remove entries whose job is already terminal (cancelled while queued, or finished by
        another worker); a job cancelled while queued still gets its webhook."""
        pipe = self.redis.pipeline(transaction=True)
        for d in deliveries:
            self._ack(pipe, d)
            if d.status == "cancelled" and d.has_callback:
                enqueue_callback(pipe, self.keys, d.job_id)
        pipe.execute()

    def _transaction(self, deltas, finals) -> list[bool]:
        job_keys = [self.keys.job(f.delivery.job_id) for f in finals if f.delivery.job_id]
        with self.redis.pipeline(transaction=True) as pipe:
            for _ in range(_MAX_WATCH_RETRIES):
                try:
                    return self._attempt(pipe, job_keys, deltas, finals)
                except redis.WatchError:
                    continue      # a client cancelled or another worker wrote: re-read and retry
        raise RuntimeError(f"terminal write kept conflicting for jobs {job_keys}")

    def _attempt(self, pipe, job_keys, deltas, finals) -> list[bool]:
        if job_keys:
            pipe.watch(*job_keys)
        states = iter(self._statuses(job_keys, [], client=pipe) if job_keys else [])
        pipe.multi()
        self._deltas(pipe, deltas)
        written = [self._final(pipe, f, next(states) if f.delivery.job_id else None) for f in finals]
        pipe.execute()
        return written

    def _final(self, pipe, f: Final, state) -> bool:
        status, tokens, model, worker, attempts = (as_str(v) if v is not None else None
                                                   for v in (state or (None,) * 5))
        if status in TERMINAL_STATUSES:
            if worker == self.worker and attempts == str(f.delivery.attempts):
                return True     # our own write of this attempt, whose reply a dropped connection lost
            pipe.hincrby(self.keys.job(f.delivery.job_id), "duplicates", 1)
            self._ack(pipe, f.delivery)
            return False
        if f.dead_letter_reason:
            self._dead_letter(pipe, f)
        if not f.delivery.job_id:
            self._ack(pipe, f.delivery)
            return True
        self._terminal(pipe, f, tokens, model)
        if f.delivery.has_callback:
            enqueue_callback(pipe, self.keys, f.delivery.job_id)
        return True

    def _terminal(self, pipe, f: Final, tokens: Optional[str], model: Optional[str]) -> None:
        """Result, admission release, end event, done push, TTLs and XACK: one FINISH call."""
        d, keys = f.delivery, self.keys
        job = keys.job(d.job_id)
        release = tokens is not None and model      # admitted by submit: release its admission share
        fields = {"status": f.status, "worker": self.worker, "finished_at": f"{time.time():.6f}",
                  **f.fields}      # fields may say when the engine finished
        self._finish([job, keys.job_done(d.job_id), keys.job_events(d.job_id), keys.job_cancel(d.job_id),
                      d.stream, keys.queued_counts(model) if release else job],
                     [f.status, self.settings.result_ttl_seconds, tokens if release else "",
                      CONSUMER_GROUP, d.entry_id, *(x for kv in fields.items() for x in kv)], client=pipe)

    def _dead_letter(self, pipe, f: Final) -> None:
        d = f.delivery
        pipe.xadd(self.keys.dead_letters(f.model), {
            "id": d.job_id or "", "stream": d.stream, "entry": d.entry_id, "attempts": d.attempts,
            "reason": f.dead_letter_reason, "fields": json.dumps(d.fields), "worker": self.worker})

    def _deltas(self, pipe, deltas) -> None:
        for job_id, fields in deltas:
            pipe.xadd(self.keys.job_events(job_id), fields)

    def _ack(self, pipe, d: Delivery) -> None:
        pipe.xack(d.stream, CONSUMER_GROUP, d.entry_id)
        pipe.xdel(d.stream, d.entry_id)      # acked entries are history: keep the stream = backlog

