"""Per-model queue figures: `qinfer queues`, the workers' queue gauges and autoscaling rules.

One STATS script per model (its streams share the model's slot) reads, per stream, the
entries not yet delivered (XLEN less the pending: acknowledged entries are deleted), the
pending ones, and the id of the oldest undelivered entry, whose milliseconds say when it
was queued.
"""
from __future__ import annotations

import time
from typing import Optional

import redis

from qinfer.queue.connection import register_script
from qinfer.queue.keys import CONSUMER_GROUP, Keys

# KEYS: a model's streams. ARGV: group.
# Returns {waiting, pending, oldest undelivered entry id or ''}.
STATS = """
local waiting, pending, oldest = 0, 0, ''
for _, key in ipairs(KEYS) do
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if ok then
    for _, g in ipairs(groups) do
      local f = {}
      for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
      if f['name'] == ARGV[1] then
        local length = redis.call('XLEN', key)
        pending = pending + f['pending']
        waiting = waiting + length - f['pending']
        local nxt = redis.call('XRANGE', key, '(' .. f['last-delivered-id'], '+', 'COUNT', 1)
        if #nxt > 0 then
          local id = nxt[1][1]
          if oldest == '' or tonumber(string.match(id, '^(%d+)')) < tonumber(string.match(oldest, '^(%d+)')) then
            oldest = id
          end
        end
      end
    end
  end
end
return {waiting, pending, oldest}
"""

COLUMNS = ["model", "queued", "pending", "oldest_queued_age_s", "queued_tokens_estimate", "dead_letters",
           "admitted_jobs", "admitted_tokens"]


def queue_stats(r: redis.Redis, keys: Keys, max_priority: int) -> list[dict]:
    models = sorted(m.decode() for m in r.smembers(keys.models()))
    return [model_stats(r, keys, m, max_priority) for m in models]


def model_stats(r: redis.Redis, keys: Keys, model: str, max_priority: int) -> dict:
    """queued: waiting for a worker; pending: delivered, not finished; oldest_queued_age_s: how
    long the oldest queued job has waited (0 when none); queued_tokens_estimate: the admission
    tokens (prompt + max_tokens) of the queued jobs, as their share of the admitted ones."""
    streams = keys.queues(model, max_priority)
    waiting, pending, oldest = register_script(r, STATS)(keys=streams, args=[CONSUMER_GROUP])
    pipe = r.pipeline(transaction=False)
    pipe.xlen(keys.dead_letters(model))
    pipe.hgetall(keys.queued_counts(model))
    dead, counts = pipe.execute(raise_on_error=False)
    counts = counts if isinstance(counts, dict) else {}
    jobs, tokens = (int(counts.get(field, 0)) for field in (b"jobs", b"tokens"))
    return {"model": model, "queued": int(waiting), "pending": int(pending),
            "oldest_queued_age_s": round(_age_s(oldest), 3),
            "queued_tokens_estimate": tokens * int(waiting) // jobs if jobs else 0,
            "dead_letters": dead if isinstance(dead, int) else 0, "admitted_jobs": jobs, "admitted_tokens": tokens}


def _age_s(entry_id: Optional[bytes]) -> float:
    if not entry_id:
        return 0.0
    queued_ms = int((entry_id.decode() if isinstance(entry_id, bytes) else entry_id).split("-")[0])
    return max(0.0, time.time() - queued_ms / 1000)
