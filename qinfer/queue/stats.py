"""Per-model queue figures for `qinfer queues`."""
from __future__ import annotations

import redis

from qinfer.queue.keys import CONSUMER_GROUP, Keys


def queue_stats(r: redis.Redis, keys: Keys, max_priority: int) -> list[dict]:
    models = sorted(m.decode() for m in r.smembers(keys.models()))
    return [_model_stats(r, keys, m, max_priority) for m in models]


def _model_stats(r: redis.Redis, keys: Keys, model: str, max_priority: int) -> dict:
    pipe = r.pipeline(transaction=False)
    for p in range(max_priority + 1):
        pipe.xlen(keys.queue(model, p))
        pipe.xpending(keys.queue(model, p), CONSUMER_GROUP)
    pipe.xlen(keys.dead_letters(model))
    pipe.hgetall(keys.queued_counts(model))
    replies = pipe.execute(raise_on_error=False)
    *per_stream, dead, counts = replies
    length = sum(x for x in per_stream[0::2] if isinstance(x, int))
    pending = sum(x["pending"] for x in per_stream[1::2] if isinstance(x, dict))
    counts = {k.decode(): int(v) for k, v in (counts or {}).items()}
    return {"model": model, "queued": length - pending, "pending": pending, "dead_letters": dead,
            "admitted_jobs": counts.get("jobs", 0), "admitted_tokens": counts.get("tokens", 0)}
