"""Retry schedule, jitter and start-up checks of the callbacks worker."""
from __future__ import annotations

import subprocess
import sys

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
    """app.Worker as Celery's: a worker whose start() returns with its exitcode set (0 when asked
    to stop, 1 after an unrecoverable error)."""

    def __init__(self, exit_codes):
        self.exit_codes, self.runs, self.options = list(exit_codes), 0, []

    def Worker(self, **options):                # noqa: N802 (Celery's name)
        app = self

        class _Worker:
            exitcode = None

            def start(self):
                app.runs += 1
                app.options.append(options)
                self.exitcode = app.exit_codes.pop(0)
        return _Worker()


def test_celery_ended_by_an_unrecoverable_error_is_started_again(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    celery = _Celery([1, 1, 0])                 # kombu's failure on a lost broker, twice, then a shutdown
    worker._run_celery_worker(celery, {"queues": ["q"]})
    assert celery.runs == 3 and celery.options == [{"queues": ["q"]}] * 3


def test_celery_failing_quickly_again_and_again_ends_the_worker(monkeypatch):
    monkeypatch.setattr(worker.time, "sleep", lambda s: None)
    celery = _Celery([1] * worker.CELERY_QUICK_FAILURES)
    with pytest.raises(SystemExit) as ended:
        worker._run_celery_worker(celery, {})
    assert ended.value.code == 1 and celery.runs == worker.CELERY_QUICK_FAILURES


def test_the_real_celery_app_reports_a_failed_run_by_its_exit_code():
    """What the restart relies on: Celery's own Worker keeps the exit code of a run that failed
    (app.worker_main, used before, returned None for it). An in-memory broker, and a blueprint
    step that fails, stand for kombu's unrecoverable error. In a child process: a Celery worker
    installs its signal handlers in the process that starts it."""
    code = """if True:
        from celery import Celery, bootsteps

        class Fails(bootsteps.StartStopStep):
            def start(self, parent):
                raise RuntimeError("unrecoverable, as kombu's on a lost broker")

        app = Celery("t", broker="memory://")
        app.steps["worker"].add(Fails)
        celery_worker = app.Worker(hostname="t@h", loglevel="CRITICAL", without_mingle=True,
                                   without_gossip=True, pool_cls="solo")
        celery_worker.start()
        import sys
        sys.__stdout__.write(f"exitcode {celery_worker.exitcode}")   # Celery redirects sys.stdout
    """
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-2:] == ["exitcode", "1"], done.stdout
