"""Every Prometheus metric of qinfer, defined once: the GPU worker's, the callbacks worker's
and the gateway's.

Names mirror vLLM's, prefixed `qinfer:`. Label `model_name` is the served model
name on every worker metric; the callback metrics are per callbacks worker.
"""
from __future__ import annotations

from typing import Optional

from prometheus_client import Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_L = ["model_name"]

# --- engine (vLLM names) ---
num_requests_running = Gauge("qinfer:num_requests_running", "Jobs in the engine's batch.", _L)
num_requests_waiting = Gauge("qinfer:num_requests_waiting", "Jobs held by this worker, not yet in the engine.", _L)
kv_cache_usage_perc = Gauge("qinfer:kv_cache_usage_perc", "Share of KV cache blocks in use (0..1).", _L)
# Gauges of the engine's running totals (a Counter cannot be set; rate() works on these all the same).
prefix_cache_queries = Gauge("qinfer:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", _L)
prefix_cache_hits = Gauge("qinfer:prefix_cache_hits", "Prompt tokens found in the prefix cache.", _L)
prompt_tokens = Counter("qinfer:prompt_tokens", "Prompt tokens processed.", _L)
generation_tokens = Counter("qinfer:generation_tokens", "Tokens generated.", _L)
time_to_first_token = Histogram("qinfer:time_to_first_token_seconds", "Engine admission to first token.",
                                _L, buckets=_LATENCY_BUCKETS)
time_per_output_token = Histogram("qinfer:time_per_output_token_seconds", "Mean inter-token latency per job.",
                                  _L, buckets=_LATENCY_BUCKETS)
e2e_request_latency = Histogram("qinfer:e2e_request_latency_seconds", "Submit to result written.",
                                _L, buckets=_LATENCY_BUCKETS)
request_queue_time = Histogram("qinfer:request_queue_time_seconds", "Submit to engine admission.",
                               _L, buckets=_LATENCY_BUCKETS)
request_success = Counter("qinfer:request_success", "Jobs finished, by terminal status.", _L + ["status"])

# --- queue ---
queue_depth = Gauge("qinfer:queue_depth", "Entries in the model's streams (queued + in flight).", _L)
queue_waiting = Gauge("qinfer:queue_waiting", "Jobs queued for the model, not yet delivered to a worker.", _L)
queue_pending = Gauge("qinfer:queue_pending", "Entries delivered to workers and not yet acknowledged.", _L)
queue_oldest_age = Gauge("qinfer:queue_oldest_age_seconds", "How long the model's oldest queued job has waited.", _L)
queue_tokens_estimate = Gauge("qinfer:queue_tokens_estimate",
                              "Prompt + max_tokens of the queued jobs (estimated from admission counts).", _L)
queue_reclaimed = Counter("qinfer:queue_reclaimed", "Entries taken over from a worker idle past the lease.", _L)
queue_dead_lettered = Counter("qinfer:queue_dead_lettered", "Jobs moved to the dead-letter stream.", _L)
queue_duplicate_results = Counter("qinfer:queue_duplicate_results",
                                  "Runs that finished after the job's result was already written.", _L)
queue_lease_lost = Counter("qinfer:queue_lease_lost", "In-flight jobs this worker lost to a reclaim.", _L)
jobs_rejected = Counter("qinfer:jobs_rejected", "Jobs failed on bad input, by error code.", _L + ["code"])
engine_errors = Counter("qinfer:engine_errors", "Engine steps that raised; their jobs were handed back.", _L)

# --- webhook callbacks (the callbacks worker, docs/callbacks.md) ---
callback_deliveries = Counter(
    "qinfer:callback_deliveries", "Finished webhook deliveries by outcome "
    "(delivered, gone = receiver answered 410, refused = SSRF guard or nothing to sign with, "
    "exhausted = retries used up, job_missing = job hash expired before delivery).", ["outcome"])
callback_attempts = Counter(
    "qinfer:callback_attempts", "Webhook POST attempts by answer (2xx..5xx, no_response, refused).",
    ["status_class"])
callback_attempt_duration = Histogram(
    "qinfer:callback_attempt_duration_seconds", "Duration of one webhook POST.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30))
callback_delivery_latency = Histogram(
    "qinfer:callback_delivery_latency_seconds",
    "From the job's terminal write to the receiver's 2xx, retries included.",
    buckets=(0.1, 0.5, 1, 5, 15, 60, 300, 1800, 3600, 4 * 3600, 12 * 3600))

# --- OpenAI-compatible gateway (docs/gateway.md), per gateway replica ---
gateway_requests = Counter("qinfer:gateway_requests", "HTTP requests by route and status code.",
                           ["route", "status"])
gateway_request_latency = Histogram("qinfer:gateway_request_latency_seconds",
                                    "Request to response headers, by route (streams: to the first byte).",
                                    ["route"], buckets=_LATENCY_BUCKETS)
gateway_batches = Counter("qinfer:gateway_batches", "Batches this replica ended, by terminal status.", ["status"])
gateway_batch_lines = Counter("qinfer:gateway_batch_lines",
                              "Lines of batches this replica finalized: completed (output file) or failed "
                              "(error file).", ["outcome"])


def set_queue_gauges(stats: dict) -> None:
    """The queue gauges of one model from queue.stats.model_stats (the numbers of `qinfer queues`)."""
    labels = {"model_name": stats["model"]}
    queue_depth.labels(**labels).set(stats["queued"] + stats["pending"])
    queue_waiting.labels(**labels).set(stats["queued"])
    queue_pending.labels(**labels).set(stats["pending"])
    queue_oldest_age.labels(**labels).set(stats["oldest_queued_age_s"])
    queue_tokens_estimate.labels(**labels).set(stats["queued_tokens_estimate"])


def serve(port: Optional[int]) -> None:
    """Expose /metrics on port (0 or None: off)."""
    if port:
        start_http_server(port)
