"""Redis goes away and comes back (kill -9, then a restart on the same port and AOF directory):
the GPU workers, the callbacks worker and the client ride it out; past the outage limit the
workers exit clearly; the client raises its typed error, never a raw redis-py one."""
import asyncio
import os
import subprocess
import threading
import time

import pytest
import redis

from qinfer.client import AsyncClient, Client
from qinfer.config import Settings
from qinfer.errors import JobTimeoutError, RedisUnavailableError
from qinfer.fleet import worker_command
from qinfer.queue.keys import Keys
from qinfer.queue.outage import REDIS_OUTAGE_EXIT_CODE
from qinfer.schema import JobStatus
from qinfer.worker.health import list_workers
from tests.callbacks_support import CallbacksWorker
from tests.fixtures_redis import TEST_ENV, wait_until

MODEL = "tiny"
# short and long jobs: some finish while Redis is away, some run through the restart
JOBS = {f"outage prompt {i}": {"temperature": 0, "max_tokens": 8 + 16 * (i % 3), "ignore_eos": True}
        for i in range(16)}
UNREACHABLE, BACK = "Redis is unreachable", "Redis is back"


def start_worker(model_dir, url: str, name: str, log_path, **env) -> subprocess.Popen:
    command = worker_command(model_dir, url, "--served-model-name", MODEL, "--num-kv-blocks", "256",
                             "--max-num-seqs", "8", "--name", name)
    environment = {**os.environ, **TEST_ENV, "QINFER_REDIS_OUTAGE_LIMIT_S": "120", **env}
    return subprocess.Popen(command, env=environment, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="module")
def offline(tiny_llama_dir):
    from qinfer import LLM, SamplingParams

    outs = LLM(str(tiny_llama_dir), num_kv_blocks=256).generate(
        list(JOBS), [SamplingParams(**s) for s in JOBS.values()], use_tqdm=False)
    return {p: (o.outputs[0].text, o.outputs[0].token_ids) for p, o in zip(JOBS, outs)}


def test_kill_9_redis_mid_run_every_job_completes_once_and_no_worker_dies(
        restartable_redis, tiny_llama_dir, tmp_path, receiver, offline):
    server = restartable_redis
    logs = [tmp_path / f"worker-{i}.log" for i in range(2)]
    workers = [start_worker(tiny_llama_dir, server.url, f"outage-{i}", log) for i, log in enumerate(logs)]
    callbacks = CallbacksWorker(server.url, tmp_path / "callbacks.log", redis_outage_limit_s="120").start()
    client = Client(settings=Settings(redis_url=server.url, callback_allow="127.0.0.1"))
    try:
        wait_until(lambda: len(list_workers(client.redis, Keys())) == 2, timeout=120)
        prompts = list(offline)
        ids = client.submit_many([{"model": MODEL, "prompt": p, "sampling": JOBS[p],
                                   "callback_url": receiver.url(f"/{i}")} for i, p in enumerate(prompts)])
        results = {}
        waiter = Client(settings=client.settings)      # waits straight through the outage
        waiting = threading.Thread(target=lambda: results.update({i: waiter.wait(i, timeout=240) for i in ids}))
        waiting.start()
        # mid-run: the short jobs are done, the longer ones running
        wait_until(lambda: any(client.get(i).status is JobStatus.SUCCEEDED for i in ids), timeout=120,
                   interval=0.01)
        server.kill()
        down_at = time.time()
        time.sleep(8)             # the workers go on computing; their results wait in memory
        up_at = time.time()
        server.start()
        waiting.join(timeout=300)
        finished = sorted(results[i].timings.finished_at - down_at for i in ids)
        assert any(0 < t < up_at - down_at for t in finished), finished           # finished offline, flushed
        assert [(results[i].status, results[i].text, results[i].token_ids) for i in ids] == \
            [(JobStatus.SUCCEEDED, *offline[p]) for p in prompts]
        assert all(client.redis.llen(Keys().job_done(i)) == 1 for i in ids)          # one result each
        wait_until(lambda: all(client.redis.hget(Keys().job(i), "callback") == b"delivered" for i in ids),
                   timeout=90)
        assert all(receiver.requests(f"/{i}") for i in range(len(ids)))

        # cancellations reach the workers again (re-subscribed to the cancel channel)
        job_id = client.submit(model=MODEL, prompt="cancel me", stream=True,
                               sampling={"temperature": 0, "max_tokens": 240, "ignore_eos": True})
        next(iter(client.stream(job_id, timeout=60)))
        assert client.cancel(job_id) is JobStatus.RUNNING
        assert client.wait(job_id, timeout=60).status is JobStatus.CANCELLED

        assert all(w.poll() is None for w in workers) and callbacks.proc.poll() is None
        # once per outage, not once per failed call (a worker busy in one long step may not notice it)
        counts = [(log.read_text().count(UNREACHABLE), log.read_text().count(BACK)) for log in logs]
        assert all(down == back <= 1 for down, back in counts) and sum(down for down, _ in counts) >= 1, counts
    finally:
        for w in workers:
            stop(w)
        callbacks.stop()


def test_workers_exit_clearly_past_the_outage_limit(restartable_redis, tiny_llama_dir, tmp_path):
    server = restartable_redis
    log = tmp_path / "worker.log"
    worker = start_worker(tiny_llama_dir, server.url, "short-limit", log, QINFER_REDIS_OUTAGE_LIMIT_S="2")
    callbacks = CallbacksWorker(server.url, tmp_path / "callbacks.log", redis_outage_limit_s="2").start()
    try:
        wait_until(lambda: list_workers(redis.Redis.from_url(server.url), Keys()), timeout=120)
        time.sleep(1)              # the callbacks worker's relay is running
        server.kill()
        assert worker.wait(timeout=60) == REDIS_OUTAGE_EXIT_CODE
        assert callbacks.proc.wait(timeout=60) == REDIS_OUTAGE_EXIT_CODE
        for text in (log.read_text(), callbacks.log()):
            assert "past QINFER_REDIS_OUTAGE_LIMIT_S=2" in text and f"exiting with code {REDIS_OUTAGE_EXIT_CODE}" in text
            assert "Traceback" not in text
    finally:
        stop(worker)
        callbacks.stop()


def test_client_raises_its_typed_error_while_redis_is_away_and_recovers(restartable_redis):
    server = restartable_redis
    client = Client(settings=Settings(redis_url=server.url, require_live_model=False))
    job_id = client.submit(model=MODEL, prompt="waiting for a worker")
    server.kill()
    for call in (lambda: client.submit(model=MODEL, prompt="x"), lambda: client.get(job_id),
                 lambda: client.cancel(job_id), lambda: client.submit_many([{"model": MODEL, "prompt": "y"}])):
        with pytest.raises(RedisUnavailableError) as refused:
            call()
        assert not isinstance(refused.value, redis.RedisError)
    for call in (lambda: client.wait(job_id, timeout=1), lambda: list(client.stream(job_id, timeout=1)),
                 lambda: asyncio.run(_async_wait(server.url, job_id, 1))):
        start = time.monotonic()
        with pytest.raises(RedisUnavailableError, match="until the timeout"):
            call()
        assert 1 <= time.monotonic() - start < 5           # its own timeout, not redis-py's retries

    results = []
    waiting = threading.Thread(target=lambda: results.append(client.wait(job_id, timeout=60)))
    waiting.start()
    time.sleep(1)
    server.start()                 # back: the waiter sees the job again
    with pytest.raises(JobTimeoutError):
        client.wait(job_id, timeout=0.2)
    assert client.cancel(job_id) is JobStatus.CANCELLED
    waiting.join(timeout=30)
    assert [r.status for r in results] == [JobStatus.CANCELLED]


async def _async_wait(url: str, job_id: str, timeout: float):
    aclient = AsyncClient(settings=Settings(redis_url=url))
    try:
        return await aclient.wait(job_id, timeout=timeout)
    finally:
        await aclient.aclose()
