"""Batches that outlive their gateway: SIGKILL mid-enqueue and mid-finalize, then a restarted
gateway finishes them with every line answered exactly once; expiry; Redis down.

Each test starts its own gateway processes (one at a time, so no other runner takes the
batch); QINFER_BATCH_CHUNK_SIZE=2 with a pause per chunk makes the kill land between
two chunks, which the test sees in the batch hash before it kills."""
import json
import urllib.error
import urllib.request
from collections import Counter

import openai
import pytest
import redis

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import free_port
from qinfer.fleet import Fleet
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from tests.fixtures_redis import TEST_ENV, wait_until
from tests.integration.gateway_support import (MODEL, REPO, GatewayProcess, batch_file, chat_line, job_requests,
                                               jsonl, paused, wait_batch)

SLOW_CHUNKS = {"QINFER_BATCH_CHUNK_SIZE": "2", "QINFER_BATCH_CHUNK_DELAY_S": "0.4"}
SHORT = {"temperature": 0, "max_tokens": 6}
LONG = {"temperature": 0, "max_tokens": 200, "ignore_eos": True}


@pytest.fixture(scope="module")
def fleet(redis_server, tiny_llama_dir):
    redis.Redis.from_url(redis_server.url).flushall()
    fleet = Fleet(tiny_llama_dir, redis_server.url, 2, env={**TEST_ENV, "PYTHONPATH": str(REPO)},
                  worker_args=("--served-model-name", MODEL, "--num-kv-blocks", "256", "--max-num-seqs", "8"))
    fleet.start().wait_ready()
    yield fleet
    fleet.stop(timeout=30)


@pytest.fixture
def start_gateway(fleet, tmp_path):
    """start_gateway(env) -> a healthy gateway on this test's file store; all stopped after."""
    started = []

    def start(env: dict | None = None, redis_url: str | None = None, healthy: bool = True) -> GatewayProcess:
        gateway = GatewayProcess(redis_url or fleet.redis_url, tmp_path / "files", env)
        started.append(gateway.start(healthy=healthy))
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


@pytest.fixture
def store(fleet):
    return redis.Redis.from_url(fleet.redis_url, decode_responses=True)


def _create(client, lines):
    uploaded = client.files.create(file=("in.jsonl", batch_file(lines)), purpose="batch")
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")


def _batch_field(store, batch_id, name) -> int:
    return int(store.hget(Keys().batch(batch_id), name) or 0)


def _jobs_of(store, batch_id) -> list[dict]:
    """Every job hash the fleet holds for this batch (duplicates would show here)."""
    requests = (json.loads(request) for _, request in job_requests(store))
    return [r for r in requests if r["metadata"].get("batch_id") == batch_id]


def _assert_each_line_once(client, batch, lines):
    output = jsonl(client.files.content(batch.output_file_id).text)
    assert Counter(line["custom_id"] for line in output) == Counter(line["custom_id"] for line in lines)
    assert all(line["response"]["status_code"] == 200 for line in output)


def test_gateway_killed_mid_enqueue_resumes_without_duplicates(start_gateway, store):
    lines = [chat_line(f"e{i}", f"Hello number {i}", **SHORT) for i in range(12)]
    first = start_gateway(SLOW_CHUNKS)
    batch = _create(first.openai(), lines)
    wait_until(lambda: _batch_field(store, batch.id, "enqueued") >= 4, timeout=60)
    first.kill()
    assert 4 <= _batch_field(store, batch.id, "enqueued") < 12         # killed between two chunks
    second = start_gateway(SLOW_CHUNKS)                                # takes over once the lease lapses
    done = wait_batch(second.openai(), batch.id, ("completed", "failed"), timeout=90)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 12, "completed": 12, "failed": 0}
    _assert_each_line_once(second.openai(), done, lines)
    assert sorted(j["metadata"]["custom_id"] for j in _jobs_of(store, batch.id)) == sorted(l["custom_id"] for l in lines)


def test_gateway_killed_mid_finalize_rewrites_the_files_once(start_gateway, store):
    lines = [chat_line(f"f{i}", f"A small robot {i}", **SHORT) for i in range(10)]
    first = start_gateway(SLOW_CHUNKS)
    batch = _create(first.openai(), lines)
    wait_until(lambda: store.hget(Keys().batch(batch.id), "status") == "finalizing"
               and _batch_field(store, batch.id, "finalized") >= 2, timeout=90)
    first.kill()
    assert 2 <= _batch_field(store, batch.id, "finalized") < 10
    assert store.hget(Keys().batch(batch.id), "status") == "finalizing"
    second = start_gateway()
    done = wait_batch(second.openai(), batch.id, ("completed",), timeout=60)
    assert done.request_counts.model_dump() == {"total": 10, "completed": 10, "failed": 0}
    _assert_each_line_once(second.openai(), done, lines)
    assert len(_jobs_of(store, batch.id)) == 10


def test_batch_past_its_window_expires_with_unfinished_lines_in_the_error_file(start_gateway, fleet):
    jobs = Client(settings=Settings(redis_url=fleet.redis_url))
    gateway = start_gateway({"QINFER_BATCH_COMPLETION_WINDOW_S": "1.5"})
    client = gateway.openai()
    lines = [chat_line(f"x{i}", f"The river {i}", **LONG) for i in range(6)]
    with paused(fleet):          # stalled workers: the window runs out whatever this machine's speed
        batch = wait_batch(client, _create(client, lines).id, ("expired", "completed"), timeout=60)
    assert batch.status == "expired" and batch.expired_at >= batch.created_at
    output = jsonl(client.files.content(batch.output_file_id).text) if batch.output_file_id else []
    errors = jsonl(client.files.content(batch.error_file_id).text)
    assert Counter(l["custom_id"] for l in output + errors) == Counter(l["custom_id"] for l in lines)
    assert errors and all(e["error"]["code"] == "batch_expired" for e in errors)
    assert batch.request_counts.model_dump() == {"total": 6, "completed": len(output), "failed": len(errors)}
    expired_jobs = [e["id"].removeprefix("batch_req_") for e in errors if "unsent" not in e["id"]]
    assert all(jobs.wait(j, timeout=60).status is JobStatus.CANCELLED for j in expired_jobs)  # not run after


def test_redis_unreachable_answers_503(start_gateway):
    gateway = start_gateway(redis_url=f"redis://127.0.0.1:{free_port()}/0", healthy=False)
    with pytest.raises(urllib.error.HTTPError) as health:
        urllib.request.urlopen(f"{gateway.url}/health")
    assert health.value.code == 503
    with pytest.raises(openai.InternalServerError) as refused:
        gateway.openai().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}])
    assert refused.value.status_code == 503 and refused.value.body["code"] == "redis_unavailable"
