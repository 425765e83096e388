"""`qinfer workers` shows live numbers, and a burst of jobs spreads over the idle workers
(the demo's 32 jobs used to run 31 on one worker: the first to wake pulled everything)."""
from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import time

import redis

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.queue.keys import Keys
from qinfer.worker.health import list_workers


def test_heartbeat_shows_running_jobs_within_a_second(redis_url, start_workers, tiny_llama_dir):
    # the default lease: heartbeats used to come every lease/3 = 10 s
    start_workers(tiny_llama_dir, env={"QINFER_LEASE_SECONDS": "30"}, args=("--served-model-name", "tiny"))
    r, keys = redis.Redis.from_url(redis_url), Keys()
    client = Client(settings=Settings(redis_url=redis_url))
    ids = client.submit_many([{"model": "tiny", "prompt": f"count {i}",
                               "sampling": {"max_tokens": 200, "ignore_eos": True}} for i in range(2)])
    submitted = time.monotonic()
    seen_running = None
    while not all(client.get(i).is_terminal for i in ids):
        (worker,) = list_workers(r, keys)
        if worker["running"] == "2" and seen_running is None:
            seen_running = time.monotonic() - submitted
        time.sleep(0.02)
    finished = time.monotonic()
    assert seen_running is not None and seen_running < 3.0
    while list_workers(r, keys)[0]["running"] != "0":
        assert time.monotonic() - finished < 3.0, "the heartbeat still shows finished jobs"
        time.sleep(0.02)
    out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", redis_url, "workers"],
                         capture_output=True, text=True, check=True).stdout
    header, row = out.splitlines()
    assert header.split() == ["name", "model", "host", "pid", "running", "waiting", "age_s"]
    assert row.split()[1] == "tiny" and row.split()[4:6] == ["0", "0"] and float(row.split()[6]) < 2.0


def test_demo_spreads_its_jobs_over_its_workers(tmp_path_factory):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path_factory.getbasetemp() / "demo-cache")}
    out = subprocess.run([sys.executable, "-m", "qinfer.demo", "--jobs", "32", "--workers", "2",
                          "--max-tokens", "8"], capture_output=True, text=True, env=env, timeout=600, check=True).stdout
    workers = re.findall(r"^\[ *\d+ succeeded by (\S+)\]", out, flags=re.M)
    assert len(workers) == 32
    counts = collections.Counter(workers)
    assert len(counts) == 2 and min(counts.values()) >= 8, counts
