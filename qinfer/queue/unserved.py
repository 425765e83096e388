"""Jobs queued for a model that no worker has served for QINFER_UNKNOWN_MODEL_TIMEOUT_S fail
with `unknown_model` (scripts.FAIL_UNSERVED decides, atomically, and writes the terminal state).

Two callers, so it happens with no worker for that model, or none at all: the client's
wait/stream asks for its own job (`fail_unserved_call`), and every worker sweeps the other
models' queues now and then (`UnservedSweep`).
"""
from __future__ import annotations

import time
from typing import Any, Optional

import redis

from qinfer.config import Settings
from qinfer.queue import scripts
from qinfer.queue.connection import register_script
from qinfer.queue.consumer import is_job_id
from qinfer.queue.keys import CONSUMER_GROUP, Keys
from qinfer.queue.records import error_json

_SWEEP_BATCH = 100        # entries per stream per sweep: a sweep stays short; the next one goes on


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def unserved_call(keys: Keys, settings: Settings, job_id: str, model: str, stream: str,
                  entry_id: str = "", payload: str | bytes = "") -> tuple[list[str], list[Any]]:
    """KEYS and ARGV of scripts.FAIL_UNSERVED for one job, queued on `stream`."""
    timeout = settings.unknown_model_timeout_s
    message = (f"no worker served model {model!r} for {timeout:g}s while this job waited "
               "(QINFER_UNKNOWN_MODEL_TIMEOUT_S): is the model name right, and are its workers up?")
    call_keys = [keys.job(job_id), keys.queued_counts(model), stream, keys.job_done(job_id),
                 keys.job_events(job_id), keys.queued_counts(model), keys.callback_outbox(job_id)]
    args = [f"{time.time():.6f}", timeout, settings.result_ttl_seconds, CONSUMER_GROUP, entry_id, model,
            error_json("unknown_model", message), payload, job_id]
    return call_keys, args


def fail_unserved_call(keys: Keys, settings: Settings, job_id: str, job_hash: dict
                       ) -> Optional[tuple[list[str], list[Any]]]:
    """The client's call for its job (a job hash as read), or None when it cannot apply yet."""
    fields = {_text(k): _text(v) for k, v in job_hash.items()}
    if not settings.unknown_model_timeout_s or fields.get("status") != "queued":
        return None
    if time.time() - float(fields.get("queued_at") or time.time()) < settings.unknown_model_timeout_s:
        return None
    model = fields["model"]
    stream = fields.get("stream") or keys.queue(model, int(fields.get("priority") or 0))
    return unserved_call(keys, settings, job_id, model, stream)


class UnservedSweep:
    """A worker's periodic look at every other model's queues."""

    def __init__(self, r: redis.Redis, keys: Keys, settings: Settings, own_model: str):
        self.redis, self.keys, self.settings, self.own_model = r, keys, settings, own_model
        self._fail = register_script(r, scripts.FAIL_UNSERVED)
        self._next_at = 0.0

    def maybe_run(self) -> int:
        """Sweep if it is time (every timeout / 4, at most every minute); returns jobs failed."""
        timeout = self.settings.unknown_model_timeout_s
        if not timeout or time.monotonic() < self._next_at:
            return 0
        self._next_at = time.monotonic() + min(timeout / 4, 60.0)
        return sum(self._sweep_model(m) for m in self._unserved_models())

    def _unserved_models(self) -> list[str]:
        now, timeout = time.time(), self.settings.unknown_model_timeout_s
        seen = {_text(k): float(v) for k, v in self.redis.hgetall(self.keys.models_seen()).items()}
        models = {_text(m) for m in self.redis.smembers(self.keys.models())} - {self.own_model}
        return sorted(m for m in models if now - seen.get(m, 0.0) >= timeout)

    def _sweep_model(self, model: str) -> int:
        older_than_ms = int((time.time() - self.settings.unknown_model_timeout_s) * 1000)
        failed = 0
        for stream in self.keys.queues(model, self.settings.max_priority):
            for entry_id, fields in self.redis.xrange(stream, "-", older_than_ms, count=_SWEEP_BATCH):
                job_id = _text(fields.get(b"id", b""))
                if is_job_id(job_id):     # entries without one wait for a worker's dead letters
                    failed += self._fail(*unserved_call(self.keys, self.settings, job_id, model, stream,
                                                        _text(entry_id), fields.get(b"payload", b"")))
        return failed
