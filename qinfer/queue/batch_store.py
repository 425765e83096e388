"""Batch state in Redis: the batch hash, its line -> job map, its open jobs, runner leases.

The lifecycle itself (validate, enqueue, settle, finalize) is the gateway's
(qinfer/gateway/batch_runner.py); every write here is one atomic step, so
whichever gateway replica holds a batch's lease can pick it up where another
one died. Batch hash fields: the Batch object's (times as unix seconds,
metadata / errors as JSON, total / completed / failed), plus owner (API key
name), callback_url, priority, outcome (the terminal status finalizing
leads to), enqueued (lines submitted so far), finalized (lines written while
finalizing), cancel_sent.
"""
from __future__ import annotations

import json
from typing import Callable, Iterator, Optional

import redis

from qinfer.batch_types import Batch, BatchErrors, BatchRequestCounts, BatchStatus
from qinfer.queue import scripts
from qinfer.queue.connection import register_script
from qinfer.queue.keys import Keys

TIME_FIELDS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at",
               "failed_at", "expired_at", "cancelling_at", "cancelled_at")
_PLAIN_FIELDS = ("id", "endpoint", "input_file_id", "completion_window", "output_file_id",
                 "error_file_id", "model")

OnCommit = Callable[[redis.client.Pipeline], None]


def batch_from_hash(fields: dict) -> Batch:
    """The OpenAI Batch object of a batch hash (str fields)."""
    plain = {k: fields[k] for k in _PLAIN_FIELDS if fields.get(k)}
    times = {k: int(float(fields[k])) for k in TIME_FIELDS if fields.get(k)}
    counts = BatchRequestCounts(**{k: int(fields.get(k) or 0) for k in ("total", "completed", "failed")})
    errors = BatchErrors.model_validate_json(fields["errors"]) if fields.get("errors") else None
    metadata = json.loads(fields["metadata"]) if fields.get("metadata") else None
    return Batch(**plain, **times, status=BatchStatus(fields["status"]), request_counts=counts,
                 errors=errors, metadata=metadata)


class BatchStore:
    """Reads and atomic writes of batch state; `r` must decode responses (str replies)."""

    def __init__(self, r: redis.Redis, keys: Keys, ttl_s: int):
        self.redis, self.keys, self.ttl_s = r, keys, ttl_s
        self._claim = register_script(r, scripts.BATCH_CLAIM)
        self._record = register_script(r, scripts.BATCH_RECORD)
        self._settle = register_script(r, scripts.BATCH_SETTLE)

    # --- the batch hash ---
    def create(self, fields: dict, owner: str) -> None:
        batch_id = fields["id"]
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(self.keys.batch(batch_id), mapping={**fields, "owner": owner})
        pipe.sadd(self.keys.batches_active(), batch_id)
        pipe.zadd(self.keys.batches(owner), {batch_id: float(fields["created_at"])})
        pipe.execute()

    def get(self, batch_id: str) -> Optional[dict]:
        return self.redis.hgetall(self.keys.batch(batch_id)) or None

    def set_fields(self, batch_id: str, **fields) -> None:
        self.redis.hset(self.keys.batch(batch_id), mapping=fields)

    def status(self, batch_id: str) -> Optional[str]:
        return self.redis.hget(self.keys.batch(batch_id), "status")

    def list(self, owner: str, after: Optional[str], limit: int) -> tuple[list[dict], bool]:
        """Newest first, starting below `after`; (batch hashes, whether more follow)."""
        index = self.keys.batches(owner)
        start = 0
        if after is not None:
            rank = self.redis.zrevrank(index, after)
            start = 0 if rank is None else rank + 1
        ids = self.redis.zrevrange(index, start, start + limit)
        pipe = self.redis.pipeline(transaction=False)
        for batch_id in ids[:limit]:
            pipe.hgetall(self.keys.batch(batch_id))
        found = [h for h in pipe.execute() if h]
        return found, len(ids) > limit

    def active(self) -> list[str]:
        return sorted(self.redis.smembers(self.keys.batches_active()))

    def claim(self, batch_id: str, runner: str, lease_s: float) -> bool:
        return bool(self._claim([self.keys.batch_lease(batch_id)], [runner, int(lease_s * 1000)]))

    def transition(self, batch_id: str, sources: tuple[BatchStatus, ...], target: BatchStatus,
                   fields: Optional[dict] = None, on_commit: Optional[OnCommit] = None) -> bool:
        """Move to `target` only from one of `sources` (compare-and-set); False if the batch
        was elsewhere. A terminal target retires the batch from the runners' work and gives
        its keys the result TTL; `on_commit` adds commands to the same MULTI/EXEC."""
        key, allowed = self.keys.batch(batch_id), {s.value for s in sources}
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    if pipe.hget(key, "status") not in allowed:
                        pipe.unwatch()
                        return False
                    pipe.multi()
                    pipe.hset(key, mapping={"status": target.value, **(fields or {})})
                    if target.is_terminal:
                        self._retire(pipe, batch_id)
                    if on_commit is not None:
                        on_commit(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue      # a cancel or another runner wrote in between: re-read

    def _retire(self, pipe, batch_id: str) -> None:
        pipe.srem(self.keys.batches_active(), batch_id)
        pipe.delete(self.keys.batch_open(batch_id), self.keys.batch_lease(batch_id))
        for key in (self.keys.batch(batch_id), self.keys.batch_jobs(batch_id)):
            pipe.expire(key, self.ttl_s)

    # --- lines and their jobs ---
    def record_jobs(self, batch_id: str, enqueued: int, lines: list[tuple[str, str, int]]) -> None:
        """Map custom_id -> job id (and open the job, by line index) for newly enqueued lines,
        (custom_id, job id, line index) each, and move the cursor to `enqueued`."""
        keys = [self.keys.batch_jobs(batch_id), self.keys.batch_open(batch_id), self.keys.batch(batch_id)]
        self._record(keys, [enqueued, *(x for line in lines for x in line)])

    def open_jobs(self, batch_id: str, limit: Optional[int] = None) -> list[str]:
        """Unfinished jobs, earliest lines first; the first `limit` of them if given."""
        return self.redis.zrange(self.keys.batch_open(batch_id), 0, -1 if limit is None else limit - 1)

    def num_open(self, batch_id: str) -> int:
        return self.redis.zcard(self.keys.batch_open(batch_id))

    def settle(self, batch_id: str, counters: dict[str, str]) -> None:
        """Count finished jobs (job id -> 'completed' | 'failed'), each once."""
        if counters:
            keys = [self.keys.batch_open(batch_id), self.keys.batch(batch_id)]
            self._settle(keys, [x for pair in counters.items() for x in pair])

    def line_jobs(self, batch_id: str, count: int) -> Iterator[list[tuple[str, str]]]:
        """(custom_id, job id) of every enqueued line, in chunks of `count` (HSCAN returns a
        small hash whole, whatever its COUNT: the chunks are cut here)."""
        chunk = []
        for pair in self.redis.hscan_iter(self.keys.batch_jobs(batch_id), count=count):
            chunk.append(pair)
            if len(chunk) == count:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def recorded(self, batch_id: str, custom_ids: list[str]) -> list[bool]:
        if not custom_ids:
            return []
        return [job_id is not None for job_id in self.redis.hmget(self.keys.batch_jobs(batch_id), custom_ids)]

    def submitted_jobs(self, model_keys: list[tuple[str, str]]) -> list[Optional[str]]:
        """Job ids already submitted under these (model, idempotency key)s, None where none was."""
        pipe = self.redis.pipeline(transaction=False)
        for model, key in model_keys:
            pipe.get(self.keys.idempotency(model, key))
        return [value.split(" ", 1)[0] if value else None for value in pipe.execute()]

    def job_statuses(self, job_ids: list[str]) -> list[Optional[str]]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.keys.job(job_id), "status")
        return pipe.execute()

    def job_hashes(self, job_ids: list[str]) -> list[dict]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(self.keys.job(job_id))
        return pipe.execute()
