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

    @field_validator("callback_retry_delays", mode="before")
    @classmethod
    def _split_delays(cls, value):
        # env form "5,300,1800"; an empty string means "no retries"
        if isinstance(value, str):
            return tuple(float(v) for v in value.split(",") if v.strip())
        return value

    @field_validator("callback_retry_delays")
    @classmethod
    def _non_negative_delays(cls, value):
        if any(d < 0 for d in value):
            raise ValueError("callback_retry_delays must be >= 0 seconds")
        return value


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
