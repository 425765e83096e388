"""One webhook POST and what its answer means.

2xx is success; 410 Gone stops (the receiver asked us to); 429/503 carry a
Retry-After we honour; anything else (other status codes, 3xx included since
redirects are not followed, timeouts, connection errors) is retried. A URL the
SSRF guard refuses is a final failure: retrying would not change the answer.
"""
from __future__ import annotations

import email.utils
import http.client
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Mapping, Optional

from qinfer.ssrf import Allowlist, CallbackURLRefused, Destination, resolve_destination

DELIVERED, GONE, REFUSED, RETRY = "delivered", "gone", "refused", "retry"
USER_AGENT = "qinfer-callbacks/1"
MAX_RESPONSE_BYTES = 4096   # only for the error text; receivers' bodies are not needed


@dataclass(frozen=True)
class AttemptResult:
    outcome: str                        # DELIVERED | GONE | REFUSED | RETRY
    status: Optional[int] = None        # HTTP status, None when no answer came
    retry_after_s: Optional[float] = None
    error: str = ""                     # why it did not succeed, for the dead-letter entry
    duration_s: float = 0.0

    @property
    def status_class(self) -> str:
        """Metric label: "2xx".."5xx", or how it failed without an answer."""
        if self.status is not None:
            return f"{self.status // 100}xx"
        return "refused" if self.outcome == REFUSED else "no_response"


def post_webhook(url: str, headers: Mapping[str, str], body: bytes,
                 timeout_s: float, allow: Allowlist) -> AttemptResult:
    """POST `body` to `url` once, connecting only to the address the guard checked."""
    start = time.monotonic()
    try:
        dest = resolve_destination(url, allow)
        status, reason, retry_after = _send(dest, headers, body, timeout_s)
    except CallbackURLRefused as exc:
        return AttemptResult(REFUSED, error=str(exc), duration_s=time.monotonic() - start)
    except (OSError, http.client.HTTPException) as exc:   # timeouts, refused connections, TLS, bad HTTP
        error = f"{type(exc).__name__}: {exc}"
        return AttemptResult(RETRY, error=error, duration_s=time.monotonic() - start)
    return _classify(status, reason, retry_after, time.monotonic() - start)


def _classify(status: int, reason: str, retry_after: Optional[float], duration_s: float) -> AttemptResult:
    if 200 <= status < 300:
        return AttemptResult(DELIVERED, status, duration_s=duration_s)
    error = f"HTTP {status} {reason}".strip()
    if status == 410:
        return AttemptResult(GONE, status, error=error, duration_s=duration_s)
    honoured = retry_after if status in (429, 503) else None
    return AttemptResult(RETRY, status, honoured, error, duration_s)


def _send(dest: Destination, headers: Mapping[str, str], body: bytes,
          timeout_s: float) -> tuple[int, str, Optional[float]]:
    conn = _connection(dest, timeout_s)
    try:
        all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
        conn.request("POST", dest.target, body=body, headers=all_headers)
        resp = conn.getresponse()
        resp.read(MAX_RESPONSE_BYTES)
        return resp.status, resp.reason or "", parse_retry_after(resp.getheader("Retry-After"))
    finally:
        conn.close()


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class _PinnedHTTPConnection(http.client.HTTPConnection):
    """Talks HTTP to `host` (Host header) but connects to the already checked `ip`."""

    def __init__(self, dest: Destination, timeout_s: float):
        super().__init__(dest.host, dest.port, timeout=timeout_s)
        self._ip = dest.ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedHTTPSConnection(_PinnedHTTPConnection):
    """Same, with TLS: SNI and certificate checked against the URL's host name."""
    default_port = 443

    def __init__(self, dest: Destination, timeout_s: float):
        super().__init__(dest, timeout_s)
        self._tls = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self._tls.wrap_socket(self.sock, server_hostname=self.host)


def _connection(dest: Destination, timeout_s: float) -> http.client.HTTPConnection:
    cls = _PinnedHTTPSConnection if dest.scheme == "https" else _PinnedHTTPConnection
    return cls(dest, timeout_s)
