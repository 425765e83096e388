"""Optional bearer API keys (QINFER_API_KEYS). A request's key name tags its jobs and owns
its files and batches; with no keys configured every caller is the anonymous owner ""."""
from __future__ import annotations

import hmac
from typing import Optional

from fastapi import Request

from qinfer.gateway.errors import APIError

ANONYMOUS = ""


def key_name(keys: dict[str, str], authorization: Optional[str]) -> str:
    """The name of the key an `Authorization: Bearer <key>` header carries; 401 otherwise."""
    if not keys:
        return ANONYMOUS
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       "authentication_error", code="missing_api_key")
    token = token.strip().encode()
    # compare with every key, in constant time, so timing tells nothing about which nearly matched
    matches = [name for name, key in keys.items() if hmac.compare_digest(token, key.encode())]
    if not matches:
        raise APIError(401, "incorrect API key", "authentication_error", code="invalid_api_key")
    return matches[0]


def caller(request: Request) -> str:
    """FastAPI dependency: the calling key's name."""
    return key_name(request.app.state.gateway.settings.api_keys, request.headers.get("authorization"))
