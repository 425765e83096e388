"""Settings of the fleet, read from QINFER_* environment variables (here and nowhere else).

Every field is QINFER_<FIELD> in the environment, e.g. QINFER_REDIS_URL.
Command-line flags override these per process.
"""
from __future__ import annotations

import logging
import sys
from functools import lru_cache
from typing import Annotated, Optional

from pydantic import field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QINFER_", extra="ignore")

    # --- Redis and queue semantics (see docs in README "Configuration") ---
    redis_url: Optional[str] = None        # None: the embedded Redis of `qinfer up`, or an error
    key_prefix: str = "qinfer:"
    lease_seconds: float = 30.0            # a running job unrenewed this long is reclaimed
    max_attempts: int = 3                  # deliveries before a job is dead-lettered
    result_ttl_seconds: int = 7 * 24 * 3600
    queue_timeout_s: float = 24 * 3600.0   # a job may only shorten these
    run_timeout_s: float = 3600.0
    max_queued_jobs: int = 100_000         # per model; submits above are refused
    max_queued_tokens: int = 100_000_000   # per model (prompt + max_tokens estimate)
    max_priority: int = 9                  # priorities are 0..max_priority, higher runs first
    submit_chunk_size: int = 500           # jobs per pipelined round trip in submit_many
    affinity_routing: bool = True          # jobs sharing a prompt prefix go to one worker by preference
    affinity_prefix_chars: int = 256       # leading prompt characters that make the affinity key
    redis_timeout_s: float = 10.0          # connect / reply timeout of one Redis call (a silent network)
    redis_outage_limit_s: float = 300.0    # Redis away this long: workers exit, wait/stream raise
    require_live_model: bool = True        # submit refuses a model no live worker serves
    unknown_model_timeout_s: float = 600.0  # queued jobs of a model unserved this long fail; 0 = never
    submit_wait_aof: bool = False          # submit returns once Redis fsynced the job (WAITAOF, >= 7.2)
    submit_wait_aof_replicas: int = 0      # ... and this many replicas did too

    # --- worker ---
    served_model_name: Optional[str] = None   # None: the model directory's base name
    worker_name: Optional[str] = None         # None: <hostname>-<pid>
    device: str = "cpu"
    drain_grace_s: float = 30.0            # SIGTERM: time to finish in-flight jobs before handing back
    heartbeat_ttl_s: float = 15.0          # a worker silent this long drops out of `qinfer workers`
    log_level: str = "INFO"
    metrics_port: int = 0                  # Prometheus /metrics port; 0 = off
    idle_block_s: float = 0.5              # XREADGROUP BLOCK while the engine is idle
    affinity_steal_after_s: float = 0.1    # a job in another worker's lane waits this long for its owner

    # --- webhook callbacks (docs/callbacks.md) ---
    webhook_secret: Optional[str] = None   # whsec_<base64>; several, comma-separated, while rotating
    callback_allow: str = ""               # hosts and CIDRs the SSRF guard lets through, comma-separated
    callback_retry_delays: Annotated[tuple[float, ...], NoDecode] = (5, 300, 1800, 7200, 21600)  # s before each retry
    callback_timeout_s: float = 15.0       # one POST: connect, send, answer
    callback_broker_url: Optional[str] = None       # Celery broker; None: redis_url
    callback_concurrency: int = 8          # POSTs in flight per callbacks worker (threads)
    callback_visibility_timeout_s: float = 120.0    # a delivery held this long by a dead worker is redone
    callback_relay_claim_idle_s: float = 30.0       # outbox entries a dead relay held this long are taken over
    callback_metrics_port: Optional[int] = None     # Prometheus port of the callbacks worker

    # --- OpenAI-compatible gateway and Batch API (docs/gateway.md) ---
    gateway_host: str = "127.0.0.1"        # `qinfer serve` binds here
    gateway_port: int = 8000
    gateway_url: str = "http://127.0.0.1:8000"   # where `qinfer batch` finds a gateway
    api_keys: Annotated[dict[str, str], NoDecode] = {}   # name:key,name:key; empty: no auth
    api_key: Optional[str] = None          # the bearer key `qinfer batch` sends
    gateway_priority: int = 5              # job priority of interactive requests that name none
    gateway_default_max_tokens: int = 512  # max_tokens of requests that give neither max_tokens field
    gateway_models_cache_s: float = 1.0    # /v1/models and the unknown-model check reuse heartbeats this long
    files_dir: str = "qinfer-files"        # the file store's directory (a shared volume for replicas)
    max_file_bytes: int = 200 * 2**20      # largest upload
    batch_priority: int = 0                # job priority of batch lines: below interactive traffic
    batch_max_lines: int = 50_000          # lines per batch input file
    batch_completion_window_s: Optional[float] = None   # set: overrides every batch's window (tests)
    batch_chunk_size: int = 500            # lines per enqueue / finalize round trip
    batch_chunk_delay_s: float = 0.0       # pause after each chunk: paces big batches; tests slow it
    batch_poll_interval_s: float = 0.5     # how often a gateway's batch runner advances its batches
    batch_lease_s: float = 30.0            # a runner's claim on a batch; a dead gateway's batches move after it

    @field_validator("callback_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value):
        # env form "5,300,1800"; an empty string means "no retries"
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_api_keys(cls, value):
        return parse_api_keys(value) if isinstance(value, str) else value

    @field_validator("callback_retry_delays")
    @classmethod
    def _non_negative_delays(cls, value):
        if any(d < 0 for d in value):
            raise ValueError("callback_retry_delays must be >= 0 seconds")
        return value


def parse_api_keys(spec: str) -> dict[str, str]:
    """"alice:sk-1,bob:sk-2" -> {"alice": "sk-1", ...}; the name goes into its jobs' metadata."""
    pairs = [item.strip().partition(":") for item in spec.split(",") if item.strip()]
    if any(not name or not key for name, _, key in pairs):
        raise ValueError("API keys must be name:key pairs, comma-separated")
    return {name: key for name, _, key in pairs}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_from_args(args) -> Settings:
    """QINFER_* settings, overridden by the command-line flags given (argparse dests named
    like the fields; flags left out are None and change nothing)."""
    overrides = {field: getattr(args, field) for field in Settings.model_fields
                 if getattr(args, field, None) is not None}
    return get_settings().model_copy(update=overrides)


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
