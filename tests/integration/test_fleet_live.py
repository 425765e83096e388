"""`qinfer workers` shows live numbers, and a burst of jobs spreads over the idle workers
(the demo's 32 jobs used to run 31 on one worker: the first to wake pulled everything)."""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time

import pytest
import redis

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.fleet import Fleet
from qinfer.queue.keys import NUM_LANES, Keys
from qinfer.worker.health import list_workers
from tests.fixtures_redis import TEST_ENV


@pytest.fixture(scope="module")
def fleet_url(redis_server, tiny_llama_dir):
    """Two workers with the default lease: heartbeats used to come every lease/3 = 10 s."""
    redis.Redis.from_url(redis_server.url).flushall()
    fleet = Fleet(tiny_llama_dir, redis_server.url, 2, env={**TEST_ENV, "QINFER_LEASE_SECONDS": "30"},
                  worker_args=("--served-model-name", "tiny", "--num-kv-blocks", "512"))
    fleet.start().wait_ready()
    yield redis_server.url
    fleet.stop(timeout=30)


def running(r) -> int:
    return sum(int(w["running"]) for w in list_workers(r, Keys()))


def test_heartbeats_show_running_jobs_within_a_second(fleet_url):
    r, client = redis.Redis.from_url(fleet_url), Client(settings=Settings(redis_url=fleet_url))
    ids = client.submit_many([{"model": "tiny", "prompt": f"count {i}",
                               "sampling": {"max_tokens": 200, "ignore_eos": True}} for i in range(2)])
    submitted, seen_running = time.monotonic(), None
    while not all(client.get(i).is_terminal for i in ids):
        if running(r) == 2 and seen_running is None:
            seen_running = time.monotonic() - submitted
        time.sleep(0.02)
    finished = time.monotonic()
    assert seen_running is not None and seen_running < 3.0
    while running(r):
        assert time.monotonic() - finished < 3.0, "the heartbeats still show finished jobs"
        time.sleep(0.02)
    out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", fleet_url, "workers"],
                         capture_output=True, text=True, check=True).stdout
    header, *rows = out.splitlines()
    assert header.split() == ["name", "model", "host", "pid", "running", "waiting", "lanes", "age_s"]
    assert len(rows) == 2
    for row in rows:
        assert row.split()[1] == "tiny" and row.split()[4:6] == ["0", "0"] and float(row.split()[7]) < 2.0
    lanes = [set(map(int, row.split()[6].split(","))) if row.split()[6] != "-" else set() for row in rows]
    assert lanes[0] | lanes[1] == set(range(NUM_LANES)) and not lanes[0] & lanes[1]   # each lane, one owner


def test_every_burst_spreads_over_the_idle_workers(fleet_url):
    """The second burst too: a worker that ran a big batch ramps up again from idle."""
    client = Client(settings=Settings(redis_url=fleet_url))
    for burst in range(2):
        ids = client.submit_many([{"model": "tiny", "prompt": f"burst {burst} job {i}",
                                   "sampling": {"max_tokens": 16, "ignore_eos": True}} for i in range(48)])
        counts = collections.Counter(client.wait(i, timeout=120).worker for i in ids)
        assert len(counts) == 2 and min(counts.values()) >= 12, (burst, counts)


def test_demo_spreads_its_jobs_over_its_workers(tmp_path_factory):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "demo-cache")}
    out = subprocess.run([sys.executable, "-m", "qinfer.demo", "--jobs", "32", "--workers", "2",
                          "--max-tokens", "8"], capture_output=True, text=True, env=env, timeout=600, check=True).stdout
    workers = re.findall(r"^\[ *\d+ succeeded by (\S+)\]", out, flags=re.M)
    assert len(workers) == 32
    counts = collections.Counter(workers)
    assert len(counts) == 2 and min(counts.values()) >= 8, counts


def test_a_second_fleet_is_ready_only_once_its_own_worker_beats(fleet_url, tiny_llama_dir):
    """Two fleets on one Redis (the cluster test's two models): the second used to count the
    first one's workers and report ready while its own was still loading."""
    second = Fleet(tiny_llama_dir, fleet_url, 1, env=TEST_ENV,
                   worker_args=("--served-model-name", "tiny-second", "--num-kv-blocks", "64"))
    try:
        assert second.start().wait_ready()
        assert [w["model"] for w in list_workers(redis.Redis.from_url(fleet_url), Keys())].count("tiny-second") == 1
    finally:
        assert second.stop(timeout=30) == [0]
