"""Transactional outbox, Celery side: the GPU worker records "deliver this callback" in the
same MULTI/EXEC as the job's result (qinfer.queue.writer.enqueue_callback), and the relay
here turns outbox entries into Celery tasks.

Why: a GPU worker never waits on a receiver or on Celery, and no result can be
written without its delivery being queued (nor the reverse). The relay acks an
entry only after the Celery publish, so a relay dying in between makes a
duplicate (webhook-id lets the receiver drop it), never a loss.
Retries wait in a sorted set (job id -> due time) and re-enter the outbox when
due, so a Celery message never sits unacked for hours (see app.py).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable

import redis
from redis.cluster import RedisCluster

from qinfer.queue.connection import register_script
from qinfer.queue.keys import Keys
from qinfer.queue.outage import REDIS_DOWN, Outage

log = logging.getLogger(__name__)

RELAY_GROUP = "relay"
BATCH = 100

# Due retries move to the outbox atomically: no retry is lost or doubled between two relays.
_MOVE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job_id in ipairs(due) do
  redis.call('ZREM', KEYS[1], job_id)
  redis.call('XADD', KEYS[2], '*', 'job_id', job_id)
end
return #due
"""


def schedule_retry(pipe: redis.client.Pipeline, keys: Keys, job_id: str, due_at: float) -> None:
    pipe.zadd(keys.callback_retries(job_id), {job_id: due_at})


class OutboxRelay:
    """Moves outbox entries (and due retries) into Celery via `publish(job_id)`.

    Each model's slot has its own outbox (queue/keys.py); the relay serves all of them, and
    reads the models set each pass, so a new model's webhooks are relayed too.
    """

    def __init__(self, client: redis.Redis, keys: Keys, publish: Callable[[str], None],
                 claim_idle_s: float, block_s: float = 0.5, outage_limit_s: float = 300.0):
        self.client, self.keys, self.publish = client, keys, publish
        self.outage = Outage(outage_limit_s, "callbacks relay")
        self.claim_idle_ms = int(claim_idle_s * 1000)
        self.block_ms = int(block_s * 1000)
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self._move_due = register_script(client, _MOVE_DUE)
        self._next_claim_at = 0.0
        self._outboxes: list[str] = []            # outboxes whose relay group exists
        # One blocking read can span several streams only on one node (a cluster refuses
        # CROSSSLOT reads): there the relay polls each outbox and sleeps when all are empty.
        self._single_node = not isinstance(client, RedisCluster)

    def run(self, stop: threading.Event) -> None:
        """Relay until `stop`; Redis away: retry with backoff (logged once), and raise
        RedisUnavailableError past the outage limit."""
        while not stop.is_set():
            try:
                self.run_once()
                self.outage.ended()
            except REDIS_DOWN as e:
                stop.wait(self.outage.failed(e))
            except Exception:   # a broker failure must not end the relay thread
                log.exception("callback relay step failed; retrying")
                stop.wait(1.0)
        try:
            self.close()
        except REDIS_DOWN:
            pass                # our pending entries are reclaimed by the next relay

    def run_once(self) -> int:
        """One pass: due retries -> outbox, reclaim entries of dead relays, relay new ones."""
        slots = self.ensure_groups()
        for outbox, retries in slots:
            self._move_due(keys=[retries, outbox], args=[time.time(), BATCH])
        try:
            entries = self._reclaim() + self._read_new()
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            self._outboxes = []          # a Redis back without its data: the next pass makes the groups
            return 0
        for outbox, entry_id, fields in entries:
            self._relay(outbox, entry_id, fields)
        return len(entries)

    def close(self) -> None:
        """Leave the groups cleanly (only where our pending entries are acked or reclaimable)."""
        for outbox in self._outboxes:
            pending = self.client.xpending_range(outbox, RELAY_GROUP, "-", "+", 1, consumername=self.consumer)
            if not pending:
                self.client.xgroup_delconsumer(outbox, RELAY_GROUP, self.consumer)

    def ensure_groups(self) -> list[tuple[str, str]]:
        """(outbox, retries) of every slot, each outbox with its relay group."""
        models = [m.decode() if isinstance(m, bytes) else m for m in self.client.smembers(self.keys.models())]
        slots = self.keys.callback_slots(models)
        for outbox, _ in slots:
            if outbox not in self._outboxes:
                self._ensure_group(outbox)
                self._outboxes.append(outbox)
        return slots

    def _ensure_group(self, outbox: str) -> None:
        try:
            self.client.xgroup_create(outbox, RELAY_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> list:
        if self._single_node:
            reply = self.client.xreadgroup(RELAY_GROUP, self.consumer, {o: ">" for o in self._outboxes},
                                           count=BATCH, block=self.block_ms)
            return _entries(reply)
        found = []
        for outbox in self._outboxes:
            found += _entries(self.client.xreadgroup(RELAY_GROUP, self.consumer, {outbox: ">"}, count=BATCH))
        if not found:
            time.sleep(self.block_ms / 1000)
        return found

    def _reclaim(self) -> list:
        if time.monotonic() < self._next_claim_at:
            return []
        self._next_claim_at = time.monotonic() + self.claim_idle_ms / 2000
        found = []
        for outbox in self._outboxes:
            reply = self.client.xautoclaim(outbox, RELAY_GROUP, self.consumer, self.claim_idle_ms, "0-0", count=BATCH)
            found += [(outbox, *e) for e in reply[1] if e[1]]   # entries deleted meanwhile come back empty
        return found

    def _relay(self, outbox: str, entry_id: str, fields: dict) -> None:
        self.publish(fields["job_id"])
        pipe = self.client.pipeline()
        pipe.xack(outbox, RELAY_GROUP, entry_id)
        pipe.xdel(outbox, entry_id)
        pipe.execute()


def _entries(reply) -> list:
    """(stream, entry id, fields) of an XREADGROUP reply."""
    return [(_text(stream), entry_id, fields) for stream, entries in (reply or []) for entry_id, fields in entries]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
