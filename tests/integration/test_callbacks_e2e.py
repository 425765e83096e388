"""The whole path: Client.submit with callback_url (and the job's own callback_secret) -> a
real GPU-worker process on the tiny model -> its terminal MULTI/EXEC queues the callback ->
the callbacks worker POSTs it, signed with the configured secret and the job's."""
from __future__ import annotations

import pytest

from qinfer.callbacks import WebhookVerificationError, generate_secret, verify
from qinfer.client import Client
from qinfer.config import Settings
from qinfer.schema import JobStatus
from tests.callbacks_support import SECRET, CallbacksWorker
from tests.fixtures_redis import wait_until



def test_finished_job_reaches_the_receiver(redis_url, tiny_llama_dir, start_workers, receiver, tmp_path):
    start_workers(tiny_llama_dir, args=("--served-model-name", "tiny"))
    callbacks = CallbacksWorker(redis_url, tmp_path / "callbacks.log").start()
    job_secret = generate_secret()
    try:
        client = Client(settings=Settings(redis_url=redis_url, callback_allow="127.0.0.1"))
        job_id = client.submit(model="tiny", prompt="The river", sampling={"max_tokens": 5},
                               callback_url=receiver.url("/e2e"), callback_secret=job_secret,
                               metadata={"order": 7})
        result = client.wait(job_id, timeout=60)
        assert result.status is JobStatus.SUCCEEDED
        (post,) = wait_until(lambda: receiver.requests("/e2e"), timeout=30)
    finally:
        callbacks.stop()
    payload = verify(SECRET, post.headers, post.body)
    assert verify(job_secret, post.headers, post.body) == payload     # the job's own secret alone verifies
    with pytest.raises(WebhookVerificationError):
        verify(generate_secret(), post.headers, post.body)
    assert job_secret not in post.body.decode() and job_secret not in result.model_dump_json()
    assert payload["type"] == "job.succeeded"
    assert payload["data"]["id"] == job_id
    assert payload["data"]["text"] == result.text
    assert payload["data"]["metadata"] == {"order": 7}
