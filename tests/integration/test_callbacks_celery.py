"""Webhook callbacks end to end: real Redis, a real callbacks worker process (Celery +
outbox relay), a real HTTP receiver on loopback."""
from __future__ import annotations

import json
import socket

import pytest

from qinfer.callbacks import verify
from qinfer.queue.keys import Keys
from tests.callbacks_support import SECRET, CallbacksWorker, write_finished_job
from tests.fixtures_redis import wait_until

KEYS = Keys()


@pytest.fixture
def worker(redis_url, tmp_path):
    w = CallbacksWorker(redis_url, tmp_path / "callbacks-worker.log").start()
    yield w
    w.stop()
    print(w.log()[-4000:])   # shown by pytest on failure


def _callback_state(client, job_id: str) -> dict:
    return client.hgetall(KEYS.job(job_id))


def test_one_signed_post_with_the_result(client, receiver, worker):
    write_finished_job(client, KEYS, "job-ok", receiver.url("/ok"), text="the answer")

    wait_until(lambda: _callback_state(client, "job-ok").get("callback") == "delivered")
    (post,) = receiver.requests("/ok")
    payload = verify(SECRET, post.headers, post.body)
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == "job-ok"
    assert payload["data"]["text"] == "the answer"
    assert payload["data"]["usage"]["total_tokens"] == 3
    assert payload["data"]["metadata"] == {"user": "u1"}
    assert post.headers["webhook-id"] == "msg_job-ok_job.succeeded"
    job = _callback_state(client, "job-ok")
    assert (job["callback_attempts"], job["callback_last_status"]) == ("1", "200")
    assert client.xlen(KEYS.callback_outbox("job-ok")) == 0


def test_retried_until_2xx_with_the_same_webhook_id(client, receiver, worker):
    receiver.plan("/flaky", 500, 500, 200)
    write_finished_job(client, KEYS, "job-flaky", receiver.url("/flaky"))

    wait_until(lambda: _callback_state(client, "job-flaky").get("callback") == "delivered")
    posts = receiver.requests("/flaky")
    assert len(posts) == 3
    assert len({p.headers["webhook-id"] for p in posts}) == 1
    for post in posts:
        verify(SECRET, post.headers, post.body)
    job = _callback_state(client, "job-flaky")
    assert (job["callback_attempts"], job["callback_last_status"]) == ("3", "200")


def test_receiver_down_dead_letters_and_disturbs_nothing(client, receiver, worker):
    closed_port = _closed_port()
    write_finished_job(client, KEYS, "job-down", f"http://127.0.0.1:{closed_port}/hook")
    write_finished_job(client, KEYS, "job-fine", receiver.url("/fine"))
    write_finished_job(client, KEYS, "job-none", None)
    untouched = _callback_state(client, "job-none")

    wait_until(lambda: _callback_state(client, "job-down").get("callback") == "failed")
    job = _callback_state(client, "job-down")
    assert job["callback_attempts"] == "3"          # 1 + two retries of the short schedule
    assert job["status"] == "succeeded"             # the job's own result is untouched
    (entry,) = [json.loads(e) for e in client.lrange(KEYS.callback_dead_letters(), 0, -1)]
    assert entry["job_id"] == "job-down" and entry["reason"] == "exhausted"
    assert "ConnectionRefusedError" in entry["error"]
    assert _callback_state(client, "job-fine")["callback"] == "delivered"
    assert _callback_state(client, "job-none") == untouched
    assert client.zcard(KEYS.callback_retries("j1")) == 0


def test_delivery_survives_kill_9_of_the_worker(client, receiver, worker):
    receiver.plan("/slow", 200, delay_s=2.0)
    write_finished_job(client, KEYS, "job-slow", receiver.url("/slow"))
    wait_until(lambda: receiver.requests("/slow"))   # the POST is under way, its answer delayed
    worker.kill()
    assert _callback_state(client, "job-slow")["callback"] == "pending"
    assert client.hlen(KEYS.celery_prefix() + "unacked") == 1   # kombu still holds it unacked

    receiver.plan("/slow", 200)
    worker.start()
    wait_until(lambda: _callback_state(client, "job-slow").get("callback") == "delivered", timeout=30)
    assert len({p.headers["webhook-id"] for p in receiver.requests("/slow")}) == 1


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
