"""Jobs XADDed by a non-Python producer (docs/queue.md "Other producers") get the bookkeeping of a
client's job, every bound a client checks, and poison at admission ends in the dead letters.

One real worker process (tests.poison_worker: the normal worker, its engine's add_request raising
for ADMISSION_POISON) and a real callbacks worker posting to a loopback receiver.
"""
import hashlib
import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import redis

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import free_port
from qinfer.fleet import Fleet
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from tests.callbacks_support import CallbacksWorker, Receiver
from tests.fixtures_redis import TEST_ENV, wait_until
from tests.integration.test_worker_fleet import REPO

MODEL = "tiny"
ADMISSION_POISON = "ADMISSION-POISON"
GREEDY = {"temperature": 0, "max_tokens": 8}
KEYS = Keys()


@pytest.fixture(scope="module")
def metrics_port():
    return free_port()


@pytest.fixture(scope="module")
def fleet(redis_server, tiny_llama_dir, metrics_port, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    env = {**TEST_ENV, "QINFER_MAX_ATTEMPTS": "3", "PYTHONPATH": str(REPO)}
    fleet = Fleet(tiny_llama_dir, redis_server.url, 1, env=env, worker_module="tests.poison_worker",
                  worker_args=("--poison-marker", "unused-marker", "--admission-poison-marker", ADMISSION_POISON,
                               "--served-model-name", MODEL, "--num-kv-blocks", "256",
                               "--metrics-port", str(metrics_port)))
    fleet.start().wait_ready()
    callbacks = CallbacksWorker(redis_server.url, tmp_path_factory.mktemp("cb") / "callbacks.log").start()
    yield fleet
    callbacks.stop()
    assert fleet.stop(timeout=30) == [0]


@pytest.fixture(scope="module")
def client(fleet):
    return Client(settings=Settings(redis_url=fleet.redis_url, callback_allow="127.0.0.1"))


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


def xadd_raw(client, job_id: str, payload, priority: int = 0) -> None:
    body = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
    client.redis.xadd(KEYS.queue(MODEL, priority), {"id": job_id, "payload": body})


def wait_raw(client, job_id: str, timeout: float = 60):
    wait_until(lambda: client.redis.exists(KEYS.job(job_id)), timeout=timeout)
    return client.wait(job_id, timeout=timeout)


def test_raw_job_submitted_and_read_with_redis_cli_only(client, fleet):
    port = str(urllib.parse.urlparse(fleet.redis_url).port)

    def cli(*args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", port, *args], capture_output=True, text=True, timeout=60, check=True)
        return done.stdout.strip()

    request = {"model": MODEL, "prompt": "The quiet harbour", "sampling": GREEDY, "metadata": {"order": 3}}
    tag = KEYS.queue(MODEL, 0).split("}")[0][len("{qinfer:"):]   # the model's tag, as docs/queue.md derives it
    assert tag == hashlib.blake2b(MODEL.encode(), digest_size=4).hexdigest()
    cli("XADD", f"{{qinfer:{tag}}}:q:{MODEL}:0", "*", "id", "cli-job-1", "payload", json.dumps(request))
    assert cli("BLMOVE", "{qinfer}:job:cli-job-1:done", "{qinfer}:job:cli-job-1:done", "LEFT", "RIGHT", "60") \
        == "succeeded"
    assert cli("HGET", "{qinfer}:job:cli-job-1", "status") == "succeeded"
    assert cli("HGET", "{qinfer}:job:cli-job-1", "attempts") == "1"
    output = json.loads(cli("HGET", "{qinfer}:job:cli-job-1", "output"))
    same = client.wait(client.submit(request), timeout=60)          # the client's path is the oracle
    assert output["outputs"][0]["text"] == same.text and output["outputs"][0]["token_ids"] == same.token_ids
    assert output["usage"]["completion_tokens"] == len(same.token_ids)


def test_raw_jobs_get_attempts_timings_webhooks_and_latency(client, receiver, metrics_port):
    before = time.time()
    xadd_raw(client, "raw-ok", {"model": MODEL, "prompt": "A small robot", "sampling": GREEDY,
                                "callback_url": receiver.url("/raw-ok")})
    xadd_raw(client, "raw-bad", {"model": MODEL, "prompt": "x", "sampling": {"temperature": -1},
                                 "callback_url": receiver.url("/raw-bad")})
    ok, bad = wait_raw(client, "raw-ok"), wait_raw(client, "raw-bad")
    assert ok.status is JobStatus.SUCCEEDED and ok.attempts == 1
    assert before - 1 < ok.timings.queued_at <= ok.timings.started_at <= ok.timings.finished_at
    assert bad.status is JobStatus.FAILED and bad.error.code == "invalid_request" and bad.attempts == 1
    for path, event in [("/raw-ok", "job.succeeded"), ("/raw-bad", "job.failed")]:
        (post,) = wait_until(lambda: receiver.requests(path), timeout=30)
        assert json.loads(post.body)["type"] == event
    wait_until(lambda: client.redis.hget(KEYS.job("raw-bad"), "callback") == b"delivered", timeout=30)
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    latency = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("qinfer:e2e_request_latency_seconds_")}
    assert latency["qinfer:e2e_request_latency_seconds_count"] >= 1
    mean = latency["qinfer:e2e_request_latency_seconds_sum"] / latency["qinfer:e2e_request_latency_seconds_count"]
    assert mean < 600          # seconds since submit, not since the epoch


@pytest.mark.parametrize("payload, code, words", [
    ({"model": MODEL, "prompt": "x", "priority": 10**30}, "invalid_request", "QINFER_MAX_PRIORITY"),
    ({"model": MODEL, "prompt": "x", "sampling": {"max_tokens": 10**9}}, "invalid_request",
     "QINFER_MAX_QUEUED_TOKENS"),
    ({"model": MODEL, "prompt": "x", "metadata": json.loads('{"a":' * 40 + '1' + '}' * 40)}, "invalid_request",
     "nested deeper than 32"),
    ('{"model": "tiny", "prompt": "broken \\ud800 emoji"}', "invalid_request", "not valid Unicode"),
    (b'{"model": "tiny", "prompt": "latin-1 \xe9t\xe9"}', "invalid_request", "not valid Unicode"),
    ('{"model": "tiny", "prompt": "x", "metadata": ' + '{"a":' * 1000 + '1' + '}' * 1000 + '}',
     "malformed_payload", "nests too deeply"),
], ids=["priority", "max_tokens", "deep-metadata", "lone-surrogate", "not-utf8", "nested-1000"])
def test_raw_path_rechecks_every_bound_at_the_first_attempt(client, fleet, payload, code, words):
    job_id = f"raw-bound-{time.monotonic_ns()}"
    xadd_raw(client, job_id, payload)
    r = wait_raw(client, job_id)
    assert r.status is JobStatus.FAILED and r.error.code == code and words in r.error.message, r.error
    assert r.attempts == 1
    assert fleet.processes[0].poll() is None


def test_stored_request_nested_1000_deep_fails_without_killing_the_worker(client, fleet):
    deep = '{"model": "tiny", "prompt": "x", "metadata": ' + '{"a":' * 1000 + '1' + '}' * 1000 + '}'
    client.redis.hset(KEYS.job("hash-deep"), mapping={"request": deep, "status": "queued", "model": MODEL,
                                                      "priority": 0, "attempts": 0})
    client.redis.xadd(KEYS.queue(MODEL, 0), {"id": "hash-deep"})
    r = client.wait("hash-deep", timeout=60)
    assert r.status is JobStatus.FAILED and r.error.code == "malformed_payload" and r.metadata == {}
    assert fleet.processes[0].poll() is None


def test_poison_at_admission_reaches_the_dead_letters(client, fleet):
    xadd_raw(client, "raw-poison", {"model": MODEL, "prompt": f"{ADMISSION_POISON} raw", "sampling": GREEDY})
    submitted = client.submit(model=MODEL, prompt=f"{ADMISSION_POISON} submitted", sampling=GREEDY)
    neighbour = client.submit(model=MODEL, prompt="a good neighbour", sampling=GREEDY)
    for job_id in ("raw-poison", submitted):
        r = wait_raw(client, job_id)
        assert r.status is JobStatus.FAILED and r.error.code == "dead_letter", r.error
        assert "after 3 attempts" in r.error.message and "poison at admission" in r.error.message
        dead = [e for _, e in client.redis.xrange(KEYS.dead_letters(MODEL)) if e[b"id"] == job_id.encode()]
        assert len(dead) == 1 and int(dead[0][b"attempts"]) == 4
    assert client.wait(neighbour, timeout=60).status is JobStatus.SUCCEEDED
    assert fleet.processes[0].poll() is None
