"""Per-model queue figures for `qinfer queues`."""
from __future__ import annotations

import redis

from qinfer.queue.consumer import stream_depth
from qinfer.queue.keys import Keys


def queue_stats(r: redis.Redis, keys: Keys, max_priority: int) -> list[dict]:
    models = sorted(m.decode() for m in r.smembers(keys.models()))
    return [_model_stats(r, keys, m, max_priority) for m in models]


def _model_stats(r: redis.Redis, keys: Keys, model: str, max_priority: int) -> dict:
    length, pending = stream_depth(r, [keys.queue(model, p) for p in range(max_priority + 1)])
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.dead_letters(model))
    pipe.hgetall(keys.queued_counts(model))
    dead, counts = pipe.execute(raise_on_error=False)
    counts = {k.decode(): int(v) for k, v in (counts or {}).items()}
    return {"model": model, "queued": length - pending, "pending": pending, "dead_letters": dead,
            "admitted_jobs": counts.get("jobs", 0), "admitted_tokens": counts.get("tokens", 0)}
