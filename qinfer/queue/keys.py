"""Every Redis key qinfer uses, named in one place.

Hash tags (the part in braces) decide the Redis Cluster slot of a key. Each model has its
own tag, "{<prefix>:<model tag>}", so a model's streams, job hashes, admission counts and
callback outbox share one slot (every multi-key script and MULTI/EXEC of a job stays on it)
while different models spread over the shards. A job id starts with its model's tag
(`<tag>.<random>`), so every key of a job is found from its id alone. Keys of the whole
deployment (workers, models, the cancel channel) carry the tag "{<prefix>}".

A model's queue is NUM_LANES streams per priority. Lane 0 is the plain stream
`...:q:<model>:<priority>` (where raw producers XADD); lanes 1.. add `:l<lane>`. Producers
place a job on the lane of its prompt prefix (prefix-affinity routing, qinfer/queue/lanes.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Optional

CONSUMER_GROUP = "workers"
NUM_LANES = 8        # fixed, so producers and workers of any deployment agree on the streams
_TAG_LEN = 8         # hex digits of a model tag


def model_tag(model: str) -> str:
    """The short, stable tag of a model's slot (8 hex digits of its name's BLAKE2b)."""
    return hashlib.blake2b(model.encode(), digest_size=_TAG_LEN // 2).hexdigest()


def job_id_tag(job_id: str) -> Optional[str]:
    """The model tag a job id starts with; None for an untagged id (a raw producer's own)."""
    tag, dot, _ = job_id.partition(".")
    if dot and len(tag) == _TAG_LEN and all(c in "0123456789abcdef" for c in tag):
        return tag
    return None
BATCH_ID_PREFIX = "batch_"      # batch ids; job ids are <tag>.<uuid hex>, so the two never meet


@dataclass(frozen=True)
class Keys:
    prefix: str = "qinfer"

    @property
    def _name(self) -> str:
        return self.prefix.strip("{}:")

    @property
    def _p(self) -> str:                          # the deployment's own slot
        return "{" + self._name + "}:"

    def _slot(self, tag: Optional[str]) -> str:
        return "{" + f"{self._name}:{tag}" + "}:" if tag else self._p

    def _m(self, model: str) -> str:              # a model's slot
        return self._slot(model_tag(model))

    def _j(self, job_id: str) -> str:             # a job's slot: its model's (untagged ids: the deployment's)
        return self._slot(job_id_tag(job_id))

    # --- jobs ---
    def job(self, job_id: str) -> str:            # hash: request, status, timestamps, result/error
        return f"{self._j(job_id)}job:{job_id}"

    def job_events(self, job_id: str) -> str:     # stream: token deltas, then an "end" entry
        return f"{self._j(job_id)}job:{job_id}:events"

    def job_done(self, job_id: str) -> str:       # list: one push on a terminal state (BLPOP wakes waiters)
        return f"{self._j(job_id)}job:{job_id}:done"

    def job_cancel(self, job_id: str) -> str:     # string flag set by Client.cancel
        return f"{self._j(job_id)}job:{job_id}:cancel"

    def idempotency(self, model: str, key: str) -> str:   # string: job id for (model, idempotency key)
        return f"{self._m(model)}idem:{model}:{key}"

    # --- queues, per served model ---
    def queue(self, model: str, priority: int, lane: int = 0) -> str:   # stream of job ids, group "workers"
        return f"{self._m(model)}q:{model}:{priority}" + (f":l{lane}" if lane else "")

    def queues(self, model: str, max_priority: int) -> list[str]:
        """Every stream of a model, highest priority first, lanes in order within a priority."""
        return [self.queue(model, p, lane) for p in range(max_priority, -1, -1) for lane in range(NUM_LANES)]

    def queued_counts(self, model: str) -> str:   # hash: jobs, tokens (admission control)
        return f"{self._m(model)}q:{model}:queued"

    def dead_letters(self, model: str) -> str:    # stream: jobs that exhausted max_attempts
        return f"{self._m(model)}dlq:{model}"

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

    # --- batches (the gateway's Batch API) ---
    def batch(self, batch_id: str) -> str:        # hash: the batch object's fields + runner state
        return f"{self._p}batch:{batch_id}"

    def batch_jobs(self, batch_id: str) -> str:   # hash: custom_id -> job id (one job per line, ever)
        return f"{self._p}batch:{batch_id}:jobs"

    def batch_open(self, batch_id: str) -> str:   # sorted set: job id -> line index, not yet counted finished
        return f"{self._p}batch:{batch_id}:open"

    def batch_lease(self, batch_id: str) -> str:  # string with TTL: the gateway runner advancing it
        return f"{self._p}batch:{batch_id}:lease"

    def batches(self, owner: str) -> str:         # sorted set: batch id -> created_at, per API key name
        return f"{self._p}batches:owner:{owner}"

    def batches_active(self) -> str:              # set: batches not yet terminal (the runners' work)
        return f"{self._p}batches:active"

    # --- callbacks (webhook delivery): outbox and retries live in the slot of the job's model ---
    def callback_subject(self, subject_id: str) -> str:   # the hash a delivery reads and records on
        return self.batch(subject_id) if subject_id.startswith(BATCH_ID_PREFIX) else self.job(subject_id)

    def callback_outbox(self, job_id: str) -> str:    # stream: job ids awaiting a webhook delivery
        return f"{self._j(job_id)}callbacks:outbox"

    def callback_retries(self, job_id: str) -> str:   # sorted set: job id -> when its next attempt is due
        return f"{self._j(job_id)}callbacks:retries"

    def callback_slots(self, models: list[str]) -> list[tuple[str, str]]:
        """(outbox, retries) of every slot that may hold callbacks: each model's, and the
        deployment's own (jobs with untagged ids)."""
        prefixes = [self._p] + sorted({self._m(m) for m in models})
        return [(f"{p}callbacks:outbox", f"{p}callbacks:retries") for p in prefixes]

    def callback_dead_letters(self) -> str:       # list: deliveries that exhausted their retries
        return f"{self._p}callbacks:dlq"

    def celery_prefix(self) -> str:               # prefix of the Celery broker's own keys (kombu)
        return f"{self._p}celery:"
