"""Settings of the fleet, read from QINFER_* environment variables (here and nowhere else).

Every field is QINFER_<FIELD> in the environment, e.g. QINFER_REDIS_URL.
Command-line flags override these per process.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Optional

from pydantic_settings import BaseSettings, SettingsConfigDict


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


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
