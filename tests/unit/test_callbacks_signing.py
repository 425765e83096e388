"""Standard Webhooks signing and the receivers' verify()."""
from __future__ import annotations

import base64
import hashlib
import hmac
import time

import pytest

from qinfer.callbacks import WebhookVerificationError, generate_secret, sign, verify

SECRET = generate_secret()
BODY = b'{"type":"job.succeeded","data":{"id":"j1"}}'


def test_roundtrip_returns_the_payload():
    headers = sign(SECRET, "msg_1", BODY)
    assert verify(SECRET, headers, BODY) == {"type": "job.succeeded", "data": {"id": "j1"}}


def test_signature_matches_the_standard_webhooks_scheme():
    headers = sign(SECRET, "msg_1", BODY, timestamp=1_700_000_000)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"msg_1.1700000000." + BODY, hashlib.sha256).digest()
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000",
                       "webhook-signature": "v1," + base64.b64encode(digest).decode()}


def test_header_names_are_case_insensitive():
    headers = {k.title(): v for k, v in sign(SECRET, "msg_1", BODY).items()}
    verify(SECRET, headers, BODY.decode())


def test_changed_body_is_rejected():
    headers = sign(SECRET, "msg_1", BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(SECRET, headers, BODY.replace(b"j1", b"j2"))


def test_wrong_secret_is_rejected():
    headers = sign(SECRET, "msg_1", BODY)
    with pytest.raises(WebhookVerificationError, match="signature"):
        verify(generate_secret(), headers, BODY)


def test_changed_id_is_rejected():
    headers = {**sign(SECRET, "msg_1", BODY), "webhook-id": "msg_2"}
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY)


@pytest.mark.parametrize("age_s", [301, -301])
def test_stale_or_future_timestamp_is_rejected(age_s):
    headers = sign(SECRET, "msg_1", BODY, timestamp=int(time.time()) - age_s)
    with pytest.raises(WebhookVerificationError, match="timestamp"):
        verify(SECRET, headers, BODY)


def test_tolerance_is_configurable():
    headers = sign(SECRET, "msg_1", BODY, timestamp=int(time.time()) - 600)
    verify(SECRET, headers, BODY, tolerance_s=900)


def test_missing_header_is_named():
    headers = sign(SECRET, "msg_1", BODY)
    del headers["webhook-signature"]
    with pytest.raises(WebhookVerificationError, match="webhook-signature"):
        verify(SECRET, headers, BODY)


def test_rotation_signs_with_every_secret_and_either_verifies():
    old, new = generate_secret(), generate_secret()
    headers = sign(f"{old},{new}", "msg_1", BODY)
    assert len(headers["webhook-signature"].split()) == 2
    verify(old, headers, BODY)
    verify([new], headers, BODY)
    verify(f"{generate_secret()} {new}", headers, BODY)


def test_malformed_secret_is_a_clear_error():
    with pytest.raises(ValueError, match="whsec_"):
        sign("whsec_not base64!", "msg_1", BODY)


def test_unknown_signature_version_is_ignored():
    headers = sign(SECRET, "msg_1", BODY)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v2,")
    with pytest.raises(WebhookVerificationError):
        verify(SECRET, headers, BODY)
