"""The wire types: validation, estimates, fingerprints, hash round trip."""
import json

import pytest
from pydantic import ValidationError

from qinfer.queue.records import error_json, output_json, result_from_hash
from qinfer.schema import Completion, JobRequest, JobStatus, Usage


def test_exactly_one_prompt_kind():
    JobRequest(model="m", prompt="hi")
    JobRequest(model="m", prompt_token_ids=[1, 2])
    JobRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(ValidationError, match="exactly one"):
        JobRequest(model="m")
    with pytest.raises(ValidationError, match="exactly one"):
        JobRequest(model="m", prompt="a", prompt_token_ids=[1])


def test_invalid_values_refused():
    with pytest.raises(ValidationError):
        JobRequest(model="m", prompt="a", sampling={"temperature": -1})
    with pytest.raises(ValidationError):
        JobRequest(model="m", prompt="a", priority=-1)
    with pytest.raises(ValidationError):
        JobRequest(model="bad name", prompt="a")
    with pytest.raises(ValidationError):
        JobRequest(model="m", prompt="a", unknown_field=1)


def test_estimated_tokens_and_fingerprint():
    a = JobRequest(model="m", prompt_token_ids=[1, 2, 3], sampling={"max_tokens": 10, "n": 2})
    assert a.estimated_tokens() == 23
    b = a.model_copy(update={"idempotency_key": "k"})
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != JobRequest(model="m", prompt_token_ids=[1, 2]).fingerprint()


def test_terminal_statuses():
    assert not JobStatus.QUEUED.is_terminal and not JobStatus.RUNNING.is_terminal
    assert all(JobStatus(s).is_terminal for s in ("succeeded", "failed", "cancelled", "expired"))


def test_result_from_hash_round_trip():
    request = JobRequest(model="m", prompt="x", metadata={"user": 7})
    raw = {b"status": b"succeeded", b"model": b"m", b"request": request.model_dump_json().encode(),
           b"output": output_json([Completion(text="hey", token_ids=[5], finish_reason="stop")],
                                  Usage(prompt_tokens=1, completion_tokens=1, total_tokens=2)).encode(),
           b"attempts": b"2", b"queued_at": b"1.5", b"worker": b"w"}
    r = result_from_hash("id1", raw)
    assert (r.status, r.text, r.token_ids, r.finish_reason) == (JobStatus.SUCCEEDED, "hey", [5], "stop")
    assert r.metadata == {"user": 7} and r.attempts == 2 and r.timings.queued_at == 1.5
    assert r.usage.total_tokens == 2


def test_error_and_malformed_request_in_hash():
    r = result_from_hash("id2", {"status": "failed", "request": "{not json",
                                 "error": error_json("malformed_payload", "bad")})
    assert r.error.code == "malformed_payload" and r.metadata == {}
    assert json.loads(error_json("a", "b")) == {"code": "a", "message": "b"}


def test_callback_secret_is_a_whsec_secret_kept_out_of_reprs_and_results():
    from qinfer.callbacks import generate_secret

    secret = generate_secret()
    request = JobRequest(model="m", prompt="x", callback_url="https://hooks.example/x", callback_secret=secret)
    assert secret not in repr(request)
    for bad in ("not-a-secret", "whsec_", "whsec_!!!"):
        with pytest.raises(ValidationError, match="callback_secret"):
            JobRequest(model="m", prompt="x", callback_secret=bad)
    r = result_from_hash("id3", {"status": "succeeded", "request": request.model_dump_json()})
    assert secret not in r.model_dump_json()
