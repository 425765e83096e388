"""Prometheus metrics of webhook delivery (move into qinfer/metrics.py with the others)."""
from __future__ import annotations

from prometheus_client import Counter, Histogram

DELIVERIES = Counter(
    "qinfer:callback_deliveries", "Finished webhook deliveries by outcome "
    "(delivered, gone = receiver answered 410, refused = SSRF guard or nothing to sign with, exhausted = retries used up, "
    "job_missing = job hash expired before delivery).", ["outcome"])
ATTEMPTS = Counter(
    "qinfer:callback_attempts", "Webhook POST attempts by answer (2xx..5xx, no_response, refused).",
    ["status_class"])
ATTEMPT_SECONDS = Histogram(
    "qinfer:callback_attempt_duration_seconds", "Duration of one webhook POST.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
DELIVERY_LATENCY_SECONDS = Histogram(
    "qinfer:callback_delivery_latency_seconds",
    "From the job's terminal write to the receiver's 2xx, retries included.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 4 * 3600, 12 * 3600))
