"""`qinfer callbacks-worker`: the Celery worker that delivers webhooks, plus the outbox relay."""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Optional

from qinfer import metrics
from qinfer.callbacks.app import QUEUE, configure_app
from qinfer.callbacks.outbox import OutboxRelay
from qinfer.callbacks.tasks import deliver, runtime
from qinfer.config import Settings, get_settings
from qinfer.errors import RedisUnavailableError
from qinfer.queue.outage import REDIS_OUTAGE_EXIT_CODE

log = logging.getLogger(__name__)

CELERY_QUICK_RUN_S = 30.0      # a Celery run shorter than this that fails counts as a quick failure
CELERY_QUICK_FAILURES = 5      # this many quick failures in a row end the callbacks worker


def run_callbacks_worker(redis_url: Optional[str] = None, *, concurrency: Optional[int] = None,
                         metrics_port: Optional[int] = None, loglevel: str = "INFO",
                         settings: Optional[Settings] = None) -> None:
    """Run until SIGTERM/SIGINT: Celery consumes deliveries, a thread relays the outbox.

    Arguments override the QINFER_* settings (command-line flags win over the environment).
    """
    settings = _with_overrides(settings or get_settings(), redis_url=redis_url,
                               callback_concurrency=concurrency, callback_metrics_port=metrics_port)
    _check(settings)
    app = configure_app(settings)
    rt = runtime()   # validates the secrets before any delivery is taken
    metrics.serve(settings.callback_metrics_port)
    relay = OutboxRelay(rt.client, rt.keys, lambda job_id: deliver.apply_async((job_id,)),
                        settings.callback_relay_claim_idle_s, outage_limit_s=settings.redis_outage_limit_s)
    stop = threading.Event()
    relay_thread = threading.Thread(target=_relay_main, args=(relay, stop), name="callbacks-relay", daemon=True)
    relay_thread.start()
    options = dict(hostname=f"callbacks-{os.getpid()}@{socket.gethostname()}", loglevel=loglevel, queues=[QUEUE],
                   without_mingle=True, without_gossip=True)
    try:
        _run_celery_worker(app, options)
    finally:
        stop.set()
        relay_thread.join(timeout=5)


def _run_celery_worker(app, options: dict) -> None:
    """Celery's worker (app.Worker(**options), what `celery worker` runs) until it is asked to
    stop. A broker connection lost while deliveries are unacked can end it with "Unrecoverable
    error" (kombu's Redis transport fails restoring them: celery/kombu#970, #582): that is a Redis
    outage, which this worker rides out, so Celery is started again (its unacked deliveries come
    back after the visibility timeout). Only CELERY_QUICK_FAILURES failures in a row, each within
    CELERY_QUICK_RUN_S of its start, end it (SystemExit with Celery's exit code). The worker is
    built here rather than through app.worker_main, which drops the exit code: a failed run
    looked like a requested stop, and the callbacks worker ended silently."""
    quick_failures = 0
    while True:
        started = time.monotonic()
        celery_worker = app.Worker(**options)
        celery_worker.start()
        code = celery_worker.exitcode
        if code in (None, 0):                      # a warm or cold shutdown that was asked for
            return
        quick = time.monotonic() - started < CELERY_QUICK_RUN_S
        quick_failures = quick_failures + 1 if quick else 1
        if quick_failures >= CELERY_QUICK_FAILURES:
            raise SystemExit(code)
        delay = min(2.0 ** quick_failures, 30.0)
        log.error("celery worker ended with exit code %s; starting it again in %.0fs", code, delay)
        time.sleep(delay)


def _relay_main(relay: OutboxRelay, stop: threading.Event) -> None:
    try:
        relay.run(stop)
    except RedisUnavailableError as gone:
        # past the outage limit: end the whole worker (its unacked deliveries are redelivered)
        log.critical("%s; exiting with code %d", gone, REDIS_OUTAGE_EXIT_CODE)
        logging.shutdown()
        os._exit(REDIS_OUTAGE_EXIT_CODE)


def _with_overrides(settings: Settings, **overrides) -> Settings:
    return settings.model_copy(update={k: v for k, v in overrides.items() if v is not None})


def _check(settings: Settings) -> None:
    if not settings.redis_url:
        raise SystemExit("callbacks worker: set QINFER_REDIS_URL or pass --redis URL")
    if not settings.webhook_secret:
        raise SystemExit("callbacks worker: set QINFER_WEBHOOK_SECRET (whsec_...; make one with "
                         "python -c 'import qinfer.callbacks as c; print(c.generate_secret())')")
