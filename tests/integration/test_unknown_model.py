"""A model no worker serves: submit refuses it (the live set comes from the workers' heartbeats),
and jobs queued for a model unserved too long fail with `unknown_model`, through the client's wait
even with no worker at all, and through any worker's sweep."""
import asyncio
import time

import pytest

from qinfer.client import AsyncClient, Client
from qinfer.config import Settings
from qinfer.errors import InvalidRequestError, JobTimeoutError, UnknownModelError
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from qinfer.worker.health import Heartbeat
from tests.fixtures_redis import wait_until

KEYS = Keys()


def beat(client: Client, model: str) -> None:
    """What a worker serving `model` writes every lease / 3."""
    Heartbeat(client.redis, KEYS, f"worker-of-{model}", model, ttl_s=5).beat(running=0, waiting=0)


def test_submit_refuses_a_model_no_live_worker_serves_and_writes_nothing(redis_url, monkeypatch):
    client = Client(settings=Settings(redis_url=redis_url, heartbeat_ttl_s=1))
    with pytest.raises(UnknownModelError, match=r"no live worker serves model 'tiny' \(served now: none\)"):
        client.submit(model="tiny", prompt="x")
    beat(client, "tiny")
    keys_before = set(client.redis.keys("*"))
    with pytest.raises(UnknownModelError, match=r"model 'tiny-lama' \(served now: 'tiny'\).*REQUIRE_LIVE_MODEL=0") as refused:
        client.submit(model="tiny-lama", prompt="a typo")
    assert isinstance(refused.value, InvalidRequestError)
    with pytest.raises(UnknownModelError, match="tiny-lama"):     # checked before the first write
        client.submit_many([{"model": "tiny", "prompt": "fine"}, {"model": "tiny-lama", "prompt": "typo"}])
    with pytest.raises(UnknownModelError, match="tiny-lama"):
        asyncio.run(AsyncClient(settings=client.settings).submit(model="tiny-lama", prompt="typo"))
    assert set(client.redis.keys("*")) == keys_before
    assert client.get(client.submit(model="tiny", prompt="served")).status is JobStatus.QUEUED

    time.sleep(1.1)                # the worker's heartbeat is older than QINFER_HEARTBEAT_TTL_S
    with pytest.raises(UnknownModelError, match="served now: none"):
        client.submit(model="tiny", prompt="x")
    ahead = Client(settings=client.settings, require_live_model=False)       # submitting ahead of the workers
    assert ahead.get(ahead.submit(model="later", prompt="x")).status is JobStatus.QUEUED
    monkeypatch.setenv("QINFER_REQUIRE_LIVE_MODEL", "0")
    assert Settings(redis_url=redis_url).require_live_model is False


def test_wait_and_stream_fail_a_job_whose_model_stays_unserved_with_no_worker_at_all(redis_url):
    settings = Settings(redis_url=redis_url, require_live_model=False, unknown_model_timeout_s=1)
    client = Client(settings=settings)
    ghost = client.submit(model="ghost", prompt="anyone?", callback_url="https://example.com/hook")
    streamed = client.submit(model="ghost", prompt="anyone there?", stream=True)
    beat(client, "tiny")
    served = client.submit(model="tiny", prompt="waits for its worker")
    start = time.monotonic()
    r = client.wait(ghost, timeout=30)
    assert time.monotonic() - start < 5
    assert r.status is JobStatus.FAILED and r.error.code == "unknown_model"
    assert "no worker served model 'ghost' for 1s" in r.error.message
    assert list(client.stream(streamed, timeout=30)) == []
    assert client.get(streamed).error.code == "unknown_model"
    assert client.redis.xlen(KEYS.queue("ghost", 0)) == 0                       # entries gone
    assert client.redis.hget(KEYS.queued_counts("ghost"), "jobs") == b"0"       # admission released
    assert [e[b"job_id"] for _, e in client.redis.xrange(KEYS.callback_outbox(ghost))] == [ghost.encode()]
    assert client.redis.llen(KEYS.job_done(ghost)) == 1
    beat(client, "tiny")
    with pytest.raises(JobTimeoutError):       # a model with a live worker is not failed
        client.wait(served, timeout=0.5)


def test_workers_sweep_the_queues_of_models_nobody_serves(redis_url, start_workers, tiny_llama_dir):
    client = Client(settings=Settings(redis_url=redis_url, require_live_model=False))
    ghost = client.submit(model="ghost", prompt="anyone?", priority=3)
    client.redis.sadd(KEYS.models(), "raw-ghost")      # what docs/queue.md asks of a raw producer
    client.redis.xadd(KEYS.queue("raw-ghost", 0), {"id": "raw-ghost-1",
                                                   "payload": '{"model": "raw-ghost", "prompt": "x"}'})
    start_workers(tiny_llama_dir, 1, env={"QINFER_UNKNOWN_MODEL_TIMEOUT_S": "1"},
                  args=("--served-model-name", "tiny"))
    # get() never fails a job itself: the tiny worker's sweep does
    wait_until(lambda: client.get(ghost).status is JobStatus.FAILED, timeout=30)
    wait_until(lambda: client.redis.exists(KEYS.job("raw-ghost-1")), timeout=30)
    for job_id in (ghost, "raw-ghost-1"):
        r = client.get(job_id)
        assert r.status is JobStatus.FAILED and r.error.code == "unknown_model", r
    assert client.redis.xlen(KEYS.queue("raw-ghost", 0)) == client.redis.xlen(KEYS.queue("ghost", 3)) == 0
    fine = Client(settings=client.settings).submit(model="tiny", prompt="served", sampling={"max_tokens": 4})
    assert client.wait(fine, timeout=60).status is JobStatus.SUCCEEDED
