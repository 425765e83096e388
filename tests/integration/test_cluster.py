"""The fleet on a real three-node Redis Cluster: each model's keys on one slot, two models
on different shards, and the fleet tests that matter (submit / wait / stream / cancel, a
worker killed with kill -9, results equal to offline generate)."""
import os
import signal

import pytest
from redis.cluster import RedisCluster

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.fleet import Fleet
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from tests.fixtures_models import offline_outputs
from tests.fixtures_redis import TEST_ENV, wait_until

GREEDY = {"temperature": 0, "max_tokens": 10}
PROMPTS = [f"{s} {i}" for i, s in enumerate(["The quick brown fox", "A small robot", "The river",
                                             "My old teacher", "Every engine", "The red kettle"] * 3)]


def _node_of(cluster: RedisCluster, key: str) -> str:
    return cluster.get_node_from_key(key).name


def _two_models_on_two_shards(cluster: RedisCluster) -> tuple[str, str]:
    """Two model names whose slots live on different nodes (tags are hashes of the names)."""
    first = "tiny-a"
    for i in range(200):
        other = f"tiny-{i}"
        if _node_of(cluster, Keys().queue(other, 0)) != _node_of(cluster, Keys().queue(first, 0)):
            return first, other
    raise AssertionError("no two shards found")


@pytest.fixture(scope="module")
def models(redis_cluster):
    return _two_models_on_two_shards(RedisCluster.from_url(redis_cluster.url))


@pytest.fixture(scope="module")
def fleets(redis_cluster, tiny_llama_dir, models):
    started = []
    for name, count in zip(models, (2, 1)):
        fleet = Fleet(tiny_llama_dir, redis_cluster.url, count, env={**TEST_ENV, "QINFER_REDIS_URL": redis_cluster.url, "QINFER_LEASE_SECONDS": "6"},
                      worker_args=("--served-model-name", name, "--num-kv-blocks", "256", "--max-num-seqs", "8"))
        started.append(fleet.start())
    for fleet in started:
        fleet.wait_ready()
    yield started
    for fleet in started:
        assert all(code in (0, -9) for code in fleet.stop(timeout=30))


@pytest.fixture(scope="module")
def client(redis_cluster, fleets):
    return Client(settings=Settings(redis_url=redis_cluster.url, max_attempts=3))


@pytest.fixture(scope="module")
def offline(tiny_llama_dir):
    return offline_outputs(tiny_llama_dir, PROMPTS, GREEDY)


def test_the_client_detects_the_cluster_from_a_plain_url(client):
    assert isinstance(client.redis, RedisCluster)


def test_jobs_of_two_models_land_on_different_shards_and_equal_offline(client, models, offline):
    ids = {m: client.submit_many([{"model": m, "prompt": p, "sampling": GREEDY} for p in PROMPTS]) for m in models}
    for model, job_ids in ids.items():
        results = [client.wait(i, timeout=120) for i in job_ids]
        assert [(r.text, r.token_ids) for r in results] == [offline[p] for p in PROMPTS]
        assert all(r.model == model for r in results)
    nodes = {m: {_node_of(client.redis, Keys().job(i)) for i in job_ids} for m, job_ids in ids.items()}
    assert all(len(n) == 1 for n in nodes.values())                  # a model's jobs: one slot's node
    assert nodes[models[0]] != nodes[models[1]]                        # two models: two shards
    assert {_node_of(client.redis, Keys().queue(m, 0)) for m in models} == set().union(*nodes.values())


def test_stream_and_cancel(client, models):
    job_id = client.submit(model=models[0], prompt=PROMPTS[0], sampling=GREEDY, stream=True)
    text = "".join(d.text for d in client.stream(job_id, timeout=60))
    assert text == client.wait(job_id, timeout=10).text and text
    queued = client.submit(model=models[1], prompt="never mind", sampling={"max_tokens": 400, "ignore_eos": True,
                                                                           "temperature": 0},
                           priority=0)
    wait_until(lambda: client.get(queued).status is not JobStatus.QUEUED, timeout=60)
    client.cancel(queued)
    result = client.wait(queued, timeout=60)
    assert result.status is JobStatus.CANCELLED and len(result.token_ids) < 400


def test_kill_9_worker_with_jobs_in_flight_nothing_lost(client, fleets, models, offline):
    victim = fleets[0].processes[0]
    ids = client.submit_many([{"model": models[0], "prompt": p, "sampling": GREEDY} for p in PROMPTS * 2])
    wait_until(lambda: any(client.get(i).status is JobStatus.RUNNING and client.get(i).worker.endswith("-0")
                           for i in ids), timeout=30, interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)
    results = [client.wait(i, timeout=120) for i in ids]
    assert [(r.text, r.token_ids) for r in results] == [offline[p] for p in PROMPTS * 2]
    assert all(client.redis.llen(Keys().job_done(i)) == 1 for i in ids)    # one result each
