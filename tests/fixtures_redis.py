"""A private redis-server per test session (never the machine's own Redis), and worker helpers."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis, free_port, redis_server_binary
from qinfer.fleet import Fleet
from qinfer.queue.keys import NUM_LANES, Keys

# Short leases so crash tests reclaim quickly.
TEST_ENV = {"QINFER_LEASE_SECONDS": "2", "QINFER_DRAIN_GRACE_S": "5", "QINFER_IDLE_BLOCK_S": "0.2",
            "QINFER_HEARTBEAT_TTL_S": "5"}


@pytest.fixture(scope="session")
def redis_server():
    with EmbeddedRedis() as server:
        yield server


class RestartableRedis:
    """A redis-server that a test kills (-9) and restarts on the same port and AOF directory.
    `appendfsync always`: every acknowledged write survives the kill."""

    def __init__(self, data_dir: Path, binary: str | None = None, appendonly: str = "yes"):
        self.port, self.data_dir = free_port(), Path(data_dir)
        self.binary, self.appendonly = binary or redis_server_binary(), appendonly
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RestartableRedis":
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data_dir),
             "--save", "", "--appendonly", self.appendonly, "--appendfsync", "always",
             "--logfile", str(self.data_dir / "redis.log")], stdout=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_until(lambda: _answers(client), timeout=20)
        return self

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.kill()


def _answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.ConnectionError:     # not listening yet, or still loading its AOF
        return False


@pytest.fixture
def restartable_redis(tmp_path):
    server = RestartableRedis(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """URL of the session's private Redis, emptied before each test."""
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url


@pytest.fixture
def test_settings(redis_url) -> Settings:
    # require_live_model off: these tests submit ahead of (or without) workers
    return Settings(redis_url=redis_url, require_live_model=False,
                    **{k[len("QINFER_"):].lower(): v for k, v in TEST_ENV.items()})


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
