"""The Celery app that runs webhook deliveries.

Redis broker, acks_late + task_reject_on_worker_lost: a delivery whose worker
dies is redelivered, never dropped. Each message lives only for one POST
(retries wait in Redis, see outbox.py), so the broker's visibility timeout can
stay short and a killed worker's delivery is redone within it. A threads pool:
deliveries are network-bound, and the relay and metrics share the process.
"""
from __future__ import annotations

from celery import Celery

from qinfer.config import Settings
from qinfer.queue.keys import Keys

QUEUE = "qinfer.callbacks"

# One module-level app so the task registry is shared by the worker and the relay.
app = Celery("qinfer.callbacks", include=["qinfer.callbacks.tasks"])


def configure_app(settings: Settings) -> Celery:
    broker_url = settings.callback_broker_url or settings.redis_url
    if not broker_url:
        raise ValueError("set QINFER_REDIS_URL (or QINFER_CALLBACK_BROKER_URL) for the callbacks worker")
    visibility_s = settings.callback_visibility_timeout_s
    app.conf.update(
        broker_url=broker_url,
        # a Redis restart or failover is ridden out: Celery reconnects for as long as it takes;
        # the relay thread ends the worker past QINFER_REDIS_OUTAGE_LIMIT_S (worker.py)
        broker_connection_retry=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options={
            "visibility_timeout": visibility_s,
            "global_keyprefix": Keys(settings.key_prefix).celery_prefix(),
            # look for abandoned messages a few times per visibility timeout
            "unacked_restore_interval": max(1.0, visibility_s / 4),
            "unacked_restore_throttle": 1,
            # a silent network fails a call instead of hanging the consumer
            "socket_timeout": settings.redis_timeout_s,
            "socket_connect_timeout": settings.redis_timeout_s,
            "retry_on_timeout": True,
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        worker_pool="threads",
        worker_concurrency=settings.callback_concurrency,
        worker_hijack_root_logger=False,
        qinfer_settings=settings,
    )
    return app
