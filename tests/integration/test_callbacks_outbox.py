"""Outbox relay and one delivery attempt against a real Redis, in process (no Celery)."""
from __future__ import annotations

import json
import time

import pytest
from prometheus_client import REGISTRY

from qinfer.callbacks import generate_secret, verify
from qinfer.callbacks.outbox import RELAY_GROUP, OutboxRelay, schedule_retry
from qinfer.queue.writer import enqueue_callback
from qinfer.ssrf import Allowlist
from qinfer.callbacks.tasks import Runtime, attempt_delivery
from qinfer.queue.keys import Keys
from tests.callbacks_support import SECRET, write_finished_job

KEYS = Keys()


@pytest.fixture
def rt(client):
    return Runtime(client, KEYS, (SECRET,), Allowlist.parse("127.0.0.1"), (0.5, 1.0), 3.0)


def _relay(client, published: list, claim_idle_s: float = 60.0) -> OutboxRelay:
    relay = OutboxRelay(client, KEYS, published.append, claim_idle_s, block_s=0.05)
    relay.ensure_groups()
    return relay


def test_enqueue_only_queues_commands_on_the_transaction(client):
    pipe = client.pipeline(transaction=True)
    enqueue_callback(pipe, KEYS, "j1")
    assert client.xlen(KEYS.callback_outbox("j1")) == 0     # nothing before EXEC
    pipe.execute()
    assert client.hget(KEYS.job("j1"), "callback") == "pending"
    assert [e[1] for e in client.xrange(KEYS.callback_outbox("j1"))] == [{"job_id": "j1"}]


def test_relay_publishes_then_acks_and_deletes(client):
    published = []
    relay = _relay(client, published)
    for job_id in ("a", "b"):
        client.xadd(KEYS.callback_outbox("j1"), {"job_id": job_id})
    assert relay.run_once() == 2
    assert published == ["a", "b"]
    assert client.xlen(KEYS.callback_outbox("j1")) == 0
    assert client.xpending(KEYS.callback_outbox("j1"), RELAY_GROUP)["pending"] == 0


def test_entry_of_a_relay_that_died_before_publishing_is_reclaimed(client):
    def broker_down(job_id):
        raise ConnectionError("broker down")

    dead = OutboxRelay(client, KEYS, broker_down, claim_idle_s=0.1, block_s=0.05)
    dead.ensure_groups()
    client.xadd(KEYS.callback_outbox("j1"), {"job_id": "a"})
    with pytest.raises(ConnectionError):
        dead.run_once()
    published = []
    survivor = _relay(client, published, claim_idle_s=0.1)
    survivor.consumer = "survivor"
    time.sleep(0.15)
    survivor.run_once()
    assert published == ["a"] and client.xlen(KEYS.callback_outbox("j1")) == 0


def test_retries_enter_the_outbox_only_when_due(client):
    published = []
    relay = _relay(client, published)
    pipe = client.pipeline()
    schedule_retry(pipe, KEYS, "now", time.time() - 1)
    schedule_retry(pipe, KEYS, "later", time.time() + 60)
    pipe.execute()
    relay.run_once()
    assert published == ["now"]
    assert client.zrange(KEYS.callback_retries("j1"), 0, -1) == ["later"]


def _gone_count() -> float:
    return REGISTRY.get_sample_value("qinfer:callback_deliveries_total", {"outcome": "gone"}) or 0.0


def test_gone_stops_at_once(client, rt, receiver):
    receiver.plan("/gone", 410)
    write_finished_job(client, KEYS, "j1", receiver.url("/gone"))
    before = _gone_count()
    assert attempt_delivery(rt, "j1") == "gone"
    assert _gone_count() == before + 1
    job = client.hgetall(KEYS.job("j1"))
    assert (job["callback"], job["callback_attempts"], job["callback_last_status"]) == ("failed", "1", "410")
    assert json.loads(client.lindex(KEYS.callback_dead_letters(), 0))["reason"] == "gone"


def test_retry_after_is_honoured(client, rt, receiver):
    receiver.plan("/busy", 429, headers={"Retry-After": "30"})
    write_finished_job(client, KEYS, "j1", receiver.url("/busy"))
    assert attempt_delivery(rt, "j1") == "retry"
    due_in = client.zscore(KEYS.callback_retries("j1"), "j1") - time.time()
    assert 29 < due_in <= 30


def test_refused_destination_is_dead_lettered_without_retries(client, rt):
    write_finished_job(client, KEYS, "j1", "http://169.254.169.254/latest/meta-data")
    assert attempt_delivery(rt, "j1") == "refused"
    assert client.zcard(KEYS.callback_retries("j1")) == 0
    entry = json.loads(client.lindex(KEYS.callback_dead_letters(), 0))
    assert entry["reason"] == "refused" and "169.254.169.254" in entry["error"]


def test_per_job_secret_signs_too(client, rt, receiver):
    job_secret = generate_secret()
    write_finished_job(client, KEYS, "j1", receiver.url("/own"), callback_secret=job_secret)
    assert attempt_delivery(rt, "j1") == "delivered"
    (post,) = receiver.requests("/own")
    verify(job_secret, post.headers, post.body)
    verify(SECRET, post.headers, post.body)


def test_duplicate_message_after_delivery_does_not_post_again(client, rt, receiver):
    write_finished_job(client, KEYS, "j1", receiver.url("/once"))
    assert attempt_delivery(rt, "j1") == "delivered"
    assert attempt_delivery(rt, "j1") == "skipped"
    assert len(receiver.requests("/once")) == 1


def test_expired_job_is_dead_lettered(client, rt):
    assert attempt_delivery(rt, "gone-job") == "job_missing"
    assert not client.exists(KEYS.job("gone-job"))   # not resurrected by the bookkeeping
    assert json.loads(client.lindex(KEYS.callback_dead_letters(), 0))["job_id"] == "gone-job"
