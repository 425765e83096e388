"""Retry schedule, jitter and start-up checks of the callbacks worker."""
from __future__ import annotations

import pytest

from qinfer.callbacks.tasks import JITTER, MAX_RETRY_AFTER_S, next_delay
from qinfer.callbacks import worker
from qinfer.callbacks.worker import run_callbacks_worker
from qinfer.config import Settings


def test_retry_delays_parse_from_the_environment(monkeypatch):
    monkeypatch.setenv("QINFER_CALLBACK_RETRY_DELAYS", "5, 300,1800")
    assert Settings().callback_retry_delays == (5, 300, 1800)
    monkeypatch.setenv("QINFER_CALLBACK_RETRY_DELAYS", "")
    assert Settings().callback_retry_delays == ()
    monkeypatch.setenv("QINFER_CALLBACK_RETRY_DELAYS", "5,-1")
    with pytest.raises(ValueError):
        Settings()


def test_delays_are_jittered_around_the_schedule():
    delays = [next_delay(100) for _ in range(200)]
    assert all(100 * (1 - JITTER) <= d <= 100 * (1 + JITTER) for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_is_a_floor_with_a_cap():
    assert next_delay(1, retry_after_s=60) == 60
    assert next_delay(1, retry_after_s=10 ** 9) == MAX_RETRY_AFTER_S
    assert next_delay(1000, retry_after_s=1) >= 800


def test_worker_refuses_to_start_without_a_secret():
    with pytest.raises(SystemExit, match="QINFER_WEBHOOK_SECRET"):
        run_callbacks_worker(settings=Settings(redis_url="redis://127.0.0.1:1/0", webhook_secret=None))


class _Celery:
    """worker_main as Celery's: SystemExit with the worker's exit code (0 when asked to stop)."""

    def __init__(self, exit_codes):
        self.exit_codes, self.runs = list(exit_codes), 0

    def worker_main(self, argv):
        self.runs += 1
        raise SystemExit(self.exit_codes.pop(0))


def test_celery_ended_by_an_unrecoverable_error_is_started_again(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    celery = _Celery([1, 1, 0])                 # kombu's failure on a lost broker, twice, then a shutdown
    worker._run_celery_worker(celery, [])
    assert celery.runs == 3


def test_celery_failing_quickly_again_and_again_ends_the_worker(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    celery = _Celery([1] * worker.CELERY_QUICK_FAILURES)
    with pytest.raises(SystemExit) as ended:
        worker._run_celery_worker(celery, [])
    assert ended.value.code == 1 and celery.runs == worker.CELERY_QUICK_FAILURES
