"""Producer side against a real Redis: submit, admission, idempotency, cancel, wait (no worker)."""
import asyncio

import pytest

from qinfer.callbacks import CallbackURLRefused
from qinfer.client import AsyncClient, Client
from qinfer.errors import IdempotencyConflictError, JobNotFoundError, JobTimeoutError, QueueFullError
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from tests.fixtures_redis import queued_entries


@pytest.fixture
def client(test_settings):
    return Client(settings=test_settings)


def test_submit_then_get_is_queued(client):
    job_id = client.submit(model="m", prompt="hello", metadata={"k": "v"}, priority=3)
    r = client.get(job_id)
    assert r.status is JobStatus.QUEUED and r.metadata == {"k": "v"} and r.attempts == 0
    assert queued_entries(client.redis, "m", 3) == 1


def test_submit_many_pipelines(client):
    ids = client.submit_many([{"model": "m", "prompt": f"p{i}"} for i in range(1200)])
    assert len(set(ids)) == 1200
    assert queued_entries(client.redis, "m") == 1200


def test_unknown_job_and_wait_timeout(client):
    with pytest.raises(JobNotFoundError):
        client.get("nope")
    job_id = client.submit(model="m", prompt="x")
    with pytest.raises(JobTimeoutError):
        client.wait(job_id, timeout=0.2)


def test_admission_bound_refuses_before_writing(test_settings):
    client = Client(settings=test_settings.model_copy(update={"max_queued_jobs": 2, "max_queued_tokens": 100}))
    client.submit(model="m", prompt="a", sampling={"max_tokens": 10})
    client.submit(model="m", prompt="b", sampling={"max_tokens": 10})
    keys_before = set(client.redis.keys("*"))
    with pytest.raises(QueueFullError, match="2 jobs already queued"):
        client.submit(model="m", prompt="c")
    assert set(client.redis.keys("*")) == keys_before
    other = Client(settings=test_settings.model_copy(update={"max_queued_tokens": 30}))
    with pytest.raises(QueueFullError, match="tokens"):
        other.submit(model="m", prompt="d", sampling={"max_tokens": 20})


def test_idempotency_key(client):
    a = client.submit(model="m", prompt="same", idempotency_key="k1")
    assert client.submit(model="m", prompt="same", idempotency_key="k1") == a
    with pytest.raises(IdempotencyConflictError, match="different request"):
        client.submit(model="m", prompt="other", idempotency_key="k1")
    assert queued_entries(client.redis, "m") == 1


def test_cancel_queued_job_is_terminal_and_releases_admission(client):
    job_id = client.submit(model="m", prompt="x")
    assert client.cancel(job_id) is JobStatus.CANCELLED
    assert client.wait(job_id, timeout=1).status is JobStatus.CANCELLED
    assert client.redis.hget(Keys().queued_counts("m"), "jobs") == b"0"
    assert client.cancel(job_id) is JobStatus.CANCELLED     # idempotent
    assert list(client.stream(job_id, timeout=1)) == []


def test_async_client(test_settings):
    async def go():
        c = AsyncClient(settings=test_settings)
        ids = await c.submit_many([{"model": "m", "prompt": "a"}, {"model": "m", "prompt": "b"}])
        job_id = await c.submit(model="m", prompt="c")
        assert (await c.get(job_id)).status is JobStatus.QUEUED
        assert await c.cancel(ids[0]) is JobStatus.CANCELLED
        assert (await c.wait(ids[0], timeout=1)).status is JobStatus.CANCELLED
        with pytest.raises(JobTimeoutError):
            await c.wait(job_id, timeout=0.1)
        await c.aclose()
    asyncio.run(go())


def test_client_without_url_is_a_clear_error(monkeypatch):
    from qinfer.config import Settings
    from qinfer.errors import NoRedisError

    with pytest.raises(NoRedisError, match="QINFER_REDIS_URL"):
        Client(settings=Settings(redis_url=None))


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "http://[::1]/hook", "http://169.254.169.254/latest",
                                 "http://2130706433/hook", "file:///etc/passwd", "gopher://example.com/"])
def test_refused_literal_callback_url_fails_the_submit_and_writes_nothing(client, url):
    keys_before = set(client.redis.keys("*"))
    with pytest.raises(CallbackURLRefused, match="callback URL"):
        client.submit(model="m", prompt="x", callback_url=url)
    good = [{"model": "m", "prompt": f"p{i}"} for i in range(3)]
    with pytest.raises(CallbackURLRefused):      # checked before the first chunk is written
        client.submit_many([*good, {"model": "m", "prompt": "bad", "callback_url": url}])
    with pytest.raises(CallbackURLRefused):
        asyncio.run(AsyncClient(settings=client.settings).submit(model="m", prompt="x", callback_url=url))
    assert set(client.redis.keys("*")) == keys_before


def test_allowlisted_and_host_name_callback_urls_are_accepted(test_settings):
    client = Client(settings=test_settings.model_copy(update={"callback_allow": "127.0.0.1"}))
    client.submit(model="m", prompt="x", callback_url="http://127.0.0.1:8080/hook")
    client.submit(model="m", prompt="y", callback_url="https://localhost/hook")   # resolved at delivery
    assert queued_entries(client.redis, "m") == 2


def test_one_job_over_the_token_bound_is_an_invalid_request_not_queue_full(client):
    from qinfer.errors import InvalidRequestError

    keys_before = set(client.redis.keys("*"))
    with pytest.raises(InvalidRequestError, match="QINFER_MAX_QUEUED_TOKENS") as refused:
        client.submit(model="m", prompt="x", sampling={"max_tokens": 10**9})
    assert not isinstance(refused.value, QueueFullError) and "lower max_tokens" in str(refused.value)
    assert set(client.redis.keys("*")) == keys_before


DEEP = {}
_level = DEEP
for _ in range(1000):
    _level["a"] = {}
    _level = _level["a"]


@pytest.mark.parametrize("fields, words", [
    ({"prompt": "x", "metadata": DEEP}, "metadata: nested deeper than 32"),
    ({"prompt": "x", "metadata": {"blob": "y" * 70_000}}, "metadata: 70012 bytes of JSON, above the limit of 65536"),
    ({"prompt": "broken \ud83d emoji"}, "prompt: text is not valid Unicode"),
    ({"messages": [{"role": "user", "content": "hi \udc00"}]}, "messages: text is not valid Unicode"),
    ({"messages": [{"role": "user", "content": "hi", "name": "\ud800"}]}, "messages: text is not valid Unicode"),
    ({"prompt": "x", "metadata": {"\ud800": 1}}, "metadata: text is not valid Unicode"),
    ({"prompt": "x", "sampling": {"stop": ["\ud800"]}}, "sampling: text is not valid Unicode"),
], ids=["deep-metadata", "big-metadata", "surrogate-prompt", "surrogate-message", "surrogate-extra",
        "surrogate-key", "surrogate-stop"])
def test_unencodable_requests_are_invalid_requests_and_write_nothing(client, fields, words):
    from qinfer.errors import InvalidRequestError

    keys_before = set(client.redis.keys("*"))
    with pytest.raises(InvalidRequestError, match=words):
        client.submit(model="m", **fields)
    with pytest.raises(InvalidRequestError, match=words):          # checked before the first chunk
        client.submit_many([{"model": "m", "prompt": "fine"}, {"model": "m", **fields}])
    with pytest.raises(InvalidRequestError, match=words):
        asyncio.run(AsyncClient(settings=client.settings).submit(model="m", **fields))
    assert set(client.redis.keys("*")) == keys_before
