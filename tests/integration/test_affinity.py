"""Prefix-affinity routing with two real workers: a prefix goes to its lane's owner, an idle
worker steals from a busy owner, ownership follows joins, and a killed owner loses nothing."""
import os
import signal

import pytest

from qinfer.client import Client
from qinfer.queue.lanes import lane_of, own_lanes
from qinfer.schema import JobStatus
from qinfer.worker.health import list_workers
from tests.fixtures_redis import wait_until

MODEL = "tiny"
ARGS = ("--served-model-name", MODEL, "--max-num-seqs", "2")
QUICK = {"temperature": 0, "max_tokens": 4}


def _names(client) -> list[str]:
    return sorted(w["name"] for w in list_workers(client.redis, client.keys) if w["model"] == MODEL)


def _two_workers_settled(client) -> list[str]:
    """The two workers' names once each heartbeat reports the lanes rendezvous hashing gives it
    (a worker re-reads its peers every 0.25 s, or after an idle blocking read: until then a joiner's lanes have two owners)."""
    def settled():
        rows = {w["name"]: w.get("lanes") for w in list_workers(client.redis, client.keys) if w["model"] == MODEL}
        workers = sorted(rows)
        return len(workers) == 2 and all(
            rows[w] == ",".join(map(str, sorted(own_lanes(w, workers, MODEL)))) for w in workers) and workers
    return wait_until(settled)


def _key_owned_by(owner: str, workers: list[str]) -> str:
    lanes = own_lanes(owner, workers, MODEL)
    if not lanes:   # rendezvous hashing of 8 lanes leaves one of two workers none, 1 pair of names in 128
        pytest.skip(f"worker {owner} owns no lane among {workers} (the names come from the test's pid)")
    return next(f"tenant-{i}" for i in range(1000) if lane_of(f"tenant-{i}") in lanes)


def _busiest_owner(workers: list[str]) -> str:
    return max(workers, key=lambda w: len(own_lanes(w, workers, MODEL)))


def _run(client, key: str, n: int, sampling=QUICK) -> list:
    ids = client.submit_many([{"model": MODEL, "prompt": f"{key} asks {i}", "affinity_key": key,
                               "sampling": sampling} for i in range(n)])
    return [client.wait(i, timeout=120) for i in ids]


@pytest.fixture
def client(test_settings):
    return Client(settings=test_settings)


def test_each_prefix_runs_on_its_owner_and_a_joining_worker_takes_its_lanes(client, start_workers, tiny_llama_dir):
    first = start_workers(tiny_llama_dir, 1, args=ARGS)
    [alone] = _names(client)
    assert {r.worker for r in _run(client, "tenant-0", 3)} == {alone}       # one worker owns every lane
    start_workers(tiny_llama_dir, 1, args=ARGS)
    workers = _two_workers_settled(client)
    joiner = next(w for w in workers if w != alone)
    key_of = {w: _key_owned_by(w, workers) for w in workers}
    assert {r.worker for r in _run(client, key_of[joiner], 2)} == {joiner}
    for worker, key in key_of.items():          # one job at a time: idle owners wake for their lanes
        for _ in range(3):
            assert _run(client, key, 1)[0].worker == worker
    assert first.processes[0].poll() is None


def test_an_idle_worker_steals_from_a_busy_owner(client, start_workers, tiny_llama_dir):
    start_workers(tiny_llama_dir, 2, args=ARGS)
    workers = _two_workers_settled(client)
    # 200 tokens each: the owner stays busy for seconds, past the other worker's 0.5 s idle block
    # (24 tokens: a fast CPU finished all 16 before the other looked beyond its own lanes)
    results = _run(client, _key_owned_by(_busiest_owner(workers), workers), 16, {"temperature": 0, "max_tokens": 200})
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    assert {r.worker for r in results} == set(workers)       # the owner's 2 slots full: the other helps


def test_killing_a_lane_owner_loses_nothing(client, start_workers, tiny_llama_dir):
    fleet = start_workers(tiny_llama_dir, 2, args=ARGS)
    workers = _two_workers_settled(client)
    owner = _busiest_owner(workers)
    ids = client.submit_many([{"model": MODEL, "prompt": f"p{i}", "affinity_key": _key_owned_by(owner, workers),
                               "sampling": {"temperature": 0, "max_tokens": 24}} for i in range(12)])
    wait_until(lambda: any(client.get(i).worker == owner and client.get(i).status is JobStatus.RUNNING
                           for i in ids), interval=0.005)
    victim = fleet.processes[int(owner.rsplit("-", 1)[1])]          # worker i is named <base>-i
    os.kill(victim.pid, signal.SIGKILL)
    results = [client.wait(i, timeout=120) for i in ids]
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    assert all(client.redis.llen(client.keys.job_done(i)) == 1 for i in ids)
