"""A private redis-server per test session (never the machine's own Redis), and worker helpers."""
from __future__ import annotations

import time

import pytest
import redis

from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.fleet import Fleet
from qinfer.queue.keys import NUM_LANES, Keys

# Short leases so crash tests reclaim quickly.
TEST_ENV = {"QINFER_LEASE_SECONDS": "2", "QINFER_DRAIN_GRACE_S": "5", "QINFER_IDLE_BLOCK_S": "0.2",
            "QINFER_HEARTBEAT_TTL_S": "5"}


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's private Redis, emptied before each test."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def test_settings(redis_url) -> Settings:
    return Settings(redis_url=redis_url, **{k[len("QINFER_"):].lower(): v for k, v in TEST_ENV.items()})


@pytest.fixture
def start_workers(redis_url):
    """start_workers(model_dir, n=1, env={...}, args=(...)) -> Fleet, ready; stopped after the test."""
    fleets = []

    def start(model_dir, n: int = 1, env: dict | None = None, args: tuple = ()) -> Fleet:
        fleet = Fleet(model_dir, redis_url, n, worker_args=("--num-kv-blocks", "256", *args),
                      env={**TEST_ENV, "QINFER_REDIS_URL": redis_url, **(env or {})})
        fleets.append(fleet.start())
        fleet.wait_ready()
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop(timeout=30)


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")



def queued_entries(r: redis.Redis, model: str, priority: int | None = None, keys: Keys = Keys()) -> int:
    """Entries in the model's streams (every lane; one priority, or all)."""
    priorities = range(Settings().max_priority + 1) if priority is None else [priority]
    return sum(r.xlen(keys.queue(model, p, lane)) for p in priorities for lane in range(NUM_LANES))
