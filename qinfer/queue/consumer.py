"""The worker side of the queue: pull, start, lease renewal, reclaim, hand-back.

Every entry a worker holds is in its consumer's pending list (PEL) until the
terminal write acknowledges it (queue/writer.py). A crashed worker's entries
go idle and are reclaimed by any worker once idle past the lease.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Optional

import redis

from qinfer.config import Settings
from qinfer.queue import scripts
from qinfer.queue.connection import register_script
from qinfer.queue.keys import CONSUMER_GROUP, NUM_LANES, Keys
from qinfer.queue.lanes import pull_order
from qinfer.queue.records import load_request_json

# A job id is part of key names: no ":" (job:<id>:events must not be another job's key), no braces.
_JOB_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def is_job_id(text: str) -> bool:
    return bool(_JOB_ID.match(text))


def as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _raw_text(v) -> str:
    """What a producer wrote, decoded losslessly: bytes that are not UTF-8 become lone surrogates,
    which the request checks refuse, and encode back to the same bytes."""
    return v.decode("utf-8", "surrogateescape") if isinstance(v, bytes) else str(v)


def _raw_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


@dataclass
class Delivery:
    """One stream entry held by this worker, and the job state read when it started."""

    stream: str
    entry_id: str
    fields: dict[str, str]
    status: Optional[str] = None          # before this delivery; None: no job hash
    attempts: int = 0                     # this delivery included
    request_json: Optional[str] = None
    queued_at: float = 0.0
    last_error: str = ""                  # why an earlier attempt failed
    cancel_requested: bool = False
    has_callback: bool = False            # the request names a callback_url (decided at start)

    @property
    def job_id(self) -> Optional[str]:
        """The entry's job id; None when missing or not a usable id (such an entry is dead-lettered)."""
        job_id = self.fields.get("id", "")
        return job_id if is_job_id(job_id) else None

    @property
    def enqueued_at(self) -> float:
        """When the entry was added: stream entry ids start with the server's clock in ms."""
        return int(self.entry_id.split("-")[0]) / 1000

    @property
    def payload(self) -> Optional[str]:
        """A JobRequest JSON written straight to the stream by a non-Python producer."""
        return self.fields.get("payload")


class Consumer:
    def __init__(self, r: redis.Redis, keys: Keys, model: str, name: str, settings: Settings):
        self.redis, self.keys, self.model, self.name, self.settings = r, keys, model, name, settings
        # Every stream of the model, highest priority first (reclaim scans them in this order);
        # pulls read them in pull_order: this worker's own lanes first (set_own_lanes).
        self.streams = keys.queues(model, settings.max_priority)
        self.pull_streams = self.wait_streams = self.streams
        self._own_flags = "1" * len(self.streams)     # every stream is this worker's until it owns lanes
        self._pull = register_script(r, scripts.PULL)
        self._start = register_script(r, scripts.START)
        self._renew = register_script(r, scripts.RENEW)
        self._reclaim = register_script(r, scripts.RECLAIM)
        self._requeue = register_script(r, scripts.REQUEUE)
        self._cursors = ["0-0"] * len(self.streams)

    @property
    def lease_ms(self) -> int:
        return int(self.settings.lease_seconds * 1000)

    def ensure_groups(self) -> None:
        """Create every stream of the model and its group (so raw XADDs are pulled too), and
        list the model among the deployment's."""
        pipe = self.redis.pipeline(transaction=False)
        for stream in self.streams:
            pipe.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        pipe.sadd(self.keys.models(), self.model)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, redis.ResponseError) and "BUSYGROUP" not in str(reply):
                raise reply

    def set_own_lanes(self, lanes: set[int]) -> None:
        """Pull these lanes first at each priority, and block only on them while idle (prefix
        affinity, queue/lanes.py): an idle owner wakes for its lane's job; another worker takes
        it only once it has waited `affinity_steal_after_s` or has another queued behind it
        (scripts.PULL): a free owner between two blocking reads still gets its single job, a
        burst or a busy owner's backlog spreads."""
        max_priority = self.settings.max_priority
        self.pull_streams = pull_order(self.keys, self.model, max_priority, lanes)
        self.wait_streams = pull_order(self.keys, self.model, max_priority, lanes, only_own=True)
        own = set(self.wait_streams)
        self._own_flags = "".join("1" if s in own else "0" for s in self.pull_streams)

    def pull(self, n: int) -> list[Delivery]:
        """At most n new entries, highest priority first, own lanes first; then mark their jobs running."""
        if n <= 0:
            return []
        steal_after_ms = int(self.settings.affinity_steal_after_s * 1000)
        rows = self._pull(self.pull_streams, [CONSUMER_GROUP, self.name, n, steal_after_ms, self._own_flags])
        return self.start([self._delivery(key, eid, flat) for key, eid, flat in rows])

    def wait_for_entries(self, block_s: float) -> list[Delivery]:
        """Idle engine: block until one of this worker's streams has an entry (one per stream at
        most); a worker that owns no lane waits out the steal delay and pulls the others'."""
        if not self.wait_streams:
            time.sleep(min(block_s, self.settings.affinity_steal_after_s))
            return self.pull(1)
        try:
            reply = self.redis.xreadgroup(CONSUMER_GROUP, self.name, {s: ">" for s in self.wait_streams},
                                          count=1, block=max(1, int(block_s * 1000)))
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self.ensure_groups()      # the streams were deleted under us (e.g. FLUSHALL)
            return []
        rows = [(key, eid, fields) for key, entries in (reply or []) for eid, fields in entries]
        rows.sort(key=lambda row: self.pull_streams.index(as_str(row[0])))
        return self.start([self._delivery(k, e, f) for k, e, f in rows])

    def reclaim(self, n: int = 1) -> list[Delivery]:
        """Take over at most n entries idle past the lease (their worker died), highest priority first."""
        reply = self._reclaim(self.streams, [CONSUMER_GROUP, self.name, self.lease_ms, n, *self._cursors])
        self._cursors = [as_str(c) for c in reply[0]]
        if not reply[1]:
            return []
        key, entries = reply[1]
        return self.start([self._delivery(key, eid, flat) for eid, flat in entries if flat])

    def start(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Count the delivery and mark each job running, in one round trip."""
        with_job = [d for d in deliveries if d.job_id]
        pipe = self.redis.pipeline(transaction=False)
        for d in with_job:
            # a raw producer's entry gets the job hash a client's submit would have written
            raw_job = [_raw_bytes(d.payload or ""), f"{d.enqueued_at:.6f}", self.model, self._priority(d)]
            self._start([self.keys.job(d.job_id), self.keys.job_cancel(d.job_id)],
                        [self.name, f"{time.time():.6f}", *raw_job], client=pipe)
        for d, reply in zip(with_job, pipe.execute() if with_job else []):
            _fill(d, reply)
        for d in deliveries:
            d.has_callback = bool(load_request_json(d.request_json or d.payload).get("callback_url"))
        return deliveries

    def cancel_flags(self, held: list[Delivery]) -> list[Delivery]:
        """Held jobs whose cancel flag is set: after a reconnect, the cancellations published
        while this worker was not subscribed."""
        pipe = self.redis.pipeline(transaction=False)
        for d in held:
            pipe.exists(self.keys.job_cancel(d.job_id))
        return [d for d, flagged in zip(held, pipe.execute() if held else []) if flagged]

    def renew(self, held: list[Delivery]) -> list[Delivery]:
        """Extend the lease of held entries; returns those another worker took over."""
        if not held:
            return []
        lost = self._renew([d.stream for d in held], [CONSUMER_GROUP, self.name, *[d.entry_id for d in held]])
        return [held[i - 1] for i in lost]

    def hand_back(self, held: list[Delivery], *, graceful: bool) -> None:
        """Make entries reclaimable right away (idle = lease). A graceful hand-back (drain)
        does not use up an attempt; one after an engine error does."""
        pipe = self.redis.pipeline(transaction=True)
        for d in held:
            pipe.xclaim(d.stream, CONSUMER_GROUP, self.name, 0, [d.entry_id],
                        idle=self.lease_ms + 1, justid=True)
            if d.job_id:
                self._requeue([self.keys.job(d.job_id)], [d.last_error, "1" if graceful else "0"], client=pipe)
        pipe.execute()

    def forget(self) -> None:
        """Drop this consumer from the groups on a clean exit, where it holds nothing."""
        for stream in self.streams:
            pending = self.redis.xpending_range(stream, CONSUMER_GROUP, "-", "+", 1, consumername=self.name)
            if not pending:
                self.redis.xgroup_delconsumer(stream, CONSUMER_GROUP, self.name)

    def _delivery(self, key, entry_id, flat) -> Delivery:
        if isinstance(flat, dict):
            fields = {_raw_text(k): _raw_text(v) for k, v in flat.items()}
        else:
            fields = {_raw_text(flat[i]): _raw_text(flat[i + 1]) for i in range(0, len(flat), 2)}
        return Delivery(stream=as_str(key), entry_id=as_str(entry_id), fields=fields)

    def _priority(self, d: Delivery) -> int:
        return self.settings.max_priority - self.streams.index(d.stream) // NUM_LANES   # lanes in order per priority


def _asks_for_callback(d: Delivery) -> bool:
    return bool(load_request_json(d.request_json or d.payload).get("callback_url"))


def _fill(d: Delivery, reply: list) -> None:
    d.status = as_str(reply[0]) if reply[0] else None
    if len(reply) > 1:
        d.attempts = int(reply[1])
        d.request_json = _raw_text(reply[2]) if reply[2] else None
        d.queued_at = float(reply[3] or 0)
        d.last_error = _raw_text(reply[4])
        d.cancel_requested = bool(reply[5])
