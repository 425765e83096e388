"""Worker heartbeats: a hash per worker with a TTL, and the listing behind `qinfer workers`."""
from __future__ import annotations

import os
import socket
import time

import redis

from qinfer.queue.keys import Keys


class Heartbeat:
    def __init__(self, r: redis.Redis, keys: Keys, name: str, model: str, ttl_s: float):
        self.redis, self.keys, self.name, self.model, self.ttl_s = r, keys, name, model, ttl_s
        self.static = {"model": model, "pid": os.getpid(), "host": socket.gethostname(),
                       "started_at": f"{time.time():.3f}"}

    def beat(self, **status) -> None:
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.worker(self.name), mapping={**self.static, **status, "last_seen": f"{now:.3f}"})
        pipe.expire(self.keys.worker(self.name), max(1, int(self.ttl_s)))
        pipe.zadd(self.keys.workers(), {self.name: now})
        pipe.hset(self.keys.models_seen(), self.model, f"{now:.3f}")   # the live models submit lists
        pipe.hset(self.keys.queued_counts(self.model), "seen", f"{now:.3f}")   # what SUBMIT checks, in the model's slot
        pipe.execute()

    def stop(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.worker(self.name))
        pipe.zrem(self.keys.workers(), self.name)
        pipe.execute()


def list_workers(r: redis.Redis, keys: Keys) -> list[dict]:
    """Live workers (heartbeat within its TTL), oldest first; stale names are pruned."""
    names = [n.decode() for n in r.zrange(keys.workers(), 0, -1)]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hgetall(keys.worker(name))
    live = []
    for name, raw in zip(names, pipe.execute()):
        if not raw:
            r.zrem(keys.workers(), name)
            continue
        live.append({"name": name, **{k.decode(): v.decode() for k, v in raw.items()}})
    return live


def live_worker_names(r: redis.Redis, keys: Keys, model: str, ttl_s: float) -> list[str]:
    """Names of the workers of `model` whose heartbeat is younger than ttl_s."""
    names = [n.decode() for n in r.zrangebyscore(keys.workers(), time.time() - ttl_s, "+inf")]
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.hget(keys.worker(name), "model")
    return [name for name, served in zip(names, pipe.execute()) if served is not None and served.decode() == model]
