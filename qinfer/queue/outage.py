"""Riding out Redis outages (a restart, a failover, a network blip): what counts as one, how long
to wait between tries, and when to give up. Used by the worker, the callbacks relay and the
client's wait/stream; each holds one Outage and asks it after every failed call.

Logs once when an outage starts and once when it ends, never per call.
"""
from __future__ import annotations

import logging
import random
import time
from contextlib import contextmanager
from typing import Iterator, Optional

import redis
from redis.backoff import NoBackoff

from qinfer.config import Settings
from qinfer.errors import RedisUnavailableError

log = logging.getLogger(__name__)

# Redis is away, not wrong: refused or dropped connections, timeouts, LOADING after a restart
# (BusyLoadingError is a ConnectionError), READONLY from a master demoted by a failover.
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)
REDIS_OUTAGE_EXIT_CODE = 18      # a worker that gave up on Redis (past QINFER_REDIS_OUTAGE_LIMIT_S)
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 2.0


def connection_options(settings: Settings, asyncio: bool = False) -> dict:
    """redis-py options for every qinfer connection: a dead server fails the call at once (one
    reconnect for a stale connection) so the caller's own backoff decides; a silent network
    fails it after QINFER_REDIS_TIMEOUT_S instead of hanging (blocking reads wait their slice more)."""
    if asyncio:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    return {"socket_connect_timeout": settings.redis_timeout_s,
            "socket_timeout": settings.redis_timeout_s + max(settings.idle_block_s, 1.0),
            "retry": Retry(NoBackoff(), 1)}


@contextmanager
def typed_redis_errors() -> Iterator[None]:
    """Raise RedisUnavailableError, never a raw redis-py exception, when Redis is away."""
    try:
        yield
    except REDIS_DOWN as e:
        raise RedisUnavailableError(f"Redis is unreachable: {e}") from e


class Outage:
    """One party's view of Redis being away; `failed` after every failed call, `ended` after a good one."""

    def __init__(self, limit_s: float, who: str):
        self.limit_s, self.who = limit_s, who
        self.since: Optional[float] = None      # monotonic start of the current outage
        self.num_failures = 0
        self.next_try_at = 0.0

    @property
    def is_active(self) -> bool:
        return self.since is not None

    def failed(self, error: Exception, deadline: Optional[float] = None) -> float:
        """Seconds to wait before the next try; RedisUnavailableError once the outage has lasted
        past the limit (or past `deadline`, a monotonic time)."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
            log.warning("%s: Redis is unreachable (%s); retrying with backoff for up to %.0fs "
                        "(QINFER_REDIS_OUTAGE_LIMIT_S)", self.who, error, self.limit_s)
        lasted = now - self.since
        if lasted >= self.limit_s:
            raise RedisUnavailableError(f"{self.who}: Redis unreachable for {lasted:.0f}s, past "
                                        f"QINFER_REDIS_OUTAGE_LIMIT_S={self.limit_s:g} (last error: {error})")
        if deadline is not None and now >= deadline:
            raise RedisUnavailableError(f"{self.who}: Redis unreachable for {lasted:.1f}s, until the "
                                        f"timeout (last error: {error})")
        self.num_failures += 1
        delay = min(self.backoff(self.num_failures), self.limit_s - lasted)
        if deadline is not None:
            delay = min(delay, deadline - now)
        self.next_try_at = now + delay
        return max(delay, 0.0)

    @staticmethod
    def backoff(num_failures: int) -> float:
        """Capped exponential backoff with jitter: in [d/2, d], d = 50 ms * 2^(n-1), at most 2 s,
        so a fleet reconnecting to a restarted Redis does not arrive in lockstep."""
        ceiling = min(_MAX_DELAY_S, _FIRST_DELAY_S * 2 ** min(num_failures - 1, 16))
        return random.uniform(ceiling / 2, ceiling)

    def retry_due(self) -> bool:
        return time.monotonic() >= self.next_try_at

    def seconds_until_retry(self) -> float:
        return max(0.0, self.next_try_at - time.monotonic())

    def ended(self) -> None:
        if self.since is not None:
            log.info("%s: Redis is back after %.1fs", self.who, time.monotonic() - self.since)
        self.since, self.num_failures, self.next_try_at = None, 0, 0.0
