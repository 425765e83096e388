"""Standard Webhooks signatures: sign outgoing callbacks, verify them on the receiver.

Headers: `webhook-id` (stable across retries, for dedup), `webhook-timestamp`
(unix seconds) and `webhook-signature`: space-separated `v1,<base64 HMAC-SHA256
of "{id}.{timestamp}.{body}">`, one per active secret, so a receiver holding any
one of them during a rotation accepts the message.
Secrets are `whsec_` + base64 of the key bytes (https://www.standardwebhooks.com).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets as _secrets
import time
from typing import Any, Iterable, Mapping, Union

from qinfer.errors import QinferError

SECRET_PREFIX = "whsec_"
SIGNATURE_VERSION = "v1"

SecretsArg = Union[str, Iterable[str]]


class WebhookVerificationError(QinferError):
    """A webhook failed verification; the message says which check failed."""


def generate_secret(num_bytes: int = 32) -> str:
    """A fresh `whsec_` secret for QINFER_WEBHOOK_SECRET."""
    return SECRET_PREFIX + base64.b64encode(_secrets.token_bytes(num_bytes)).decode()


def parse_secrets(secrets: SecretsArg) -> list[bytes]:
    """Key bytes of every secret; a string may list several, comma- or space-separated."""
    items = secrets.replace(",", " ").split() if isinstance(secrets, str) else list(secrets)
    return [_decode_secret(s.strip()) for s in items if s and s.strip()]


def _decode_secret(secret: str) -> bytes:
    body = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("webhook secret must be 'whsec_' + base64 (see qinfer.callbacks.generate_secret)") from None


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def sign(secrets: SecretsArg, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three webhook headers for `body`, signed with every secret given."""
    keys = parse_secrets(secrets)
    if not keys:
        raise ValueError("no webhook secret to sign with")
    ts = int(time.time()) if timestamp is None else int(timestamp)
    sigs = " ".join(f"{SIGNATURE_VERSION},{_signature(k, msg_id, ts, body)}" for k in keys)
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": sigs}


def verify(secret: SecretsArg, headers: Mapping[str, str], body: Union[bytes, str],
           tolerance_s: float = 300) -> Any:
    """Check a received webhook and return its decoded JSON payload.

    `secret` may hold several secrets (any one matching is enough); `headers` is
    any mapping (names are matched case-insensitively). Raises
    WebhookVerificationError on a missing header, a timestamp further than
    `tolerance_s` from now (replay), or no matching signature.
    """
    raw = body.encode() if isinstance(body, str) else bytes(body)
    msg_id, ts = _required_headers(headers)
    _check_timestamp(ts, tolerance_s)
    expected = {_signature(k, msg_id, ts, raw) for k in parse_secrets(secret)}
    if not any(_matches(sig, expected) for sig in _header(headers, "webhook-signature").split()):
        raise WebhookVerificationError("no matching signature (wrong secret or altered body)")
    try:
        return json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("body is not JSON") from None


def _matches(sig: str, expected: set[str]) -> bool:
    version, _, value = sig.partition(",")
    # compare_digest against every candidate: no early exit that leaks which one matched
    hits = [hmac.compare_digest(value.encode(), e.encode()) for e in expected]
    return version == SIGNATURE_VERSION and any(hits)


def _required_headers(headers: Mapping[str, str]) -> tuple[str, int]:
    msg_id = _header(headers, "webhook-id")
    try:
        return msg_id, int(_header(headers, "webhook-timestamp"))
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None


def _header(headers: Mapping[str, str], name: str) -> str:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    raise WebhookVerificationError(f"missing header {name}")


def _check_timestamp(ts: int, tolerance_s: float) -> None:
    skew = time.time() - ts
    if skew > tolerance_s:
        raise WebhookVerificationError(f"timestamp too old ({skew:.0f} s > {tolerance_s} s)")
    if skew < -tolerance_s:
        raise WebhookVerificationError(f"timestamp too far in the future ({-skew:.0f} s)")
