"""The worker's composition root: settings + engine config -> engine, consumer, writer,
heartbeat and metrics, wired into one Worker and served until it drains.

Called by `qinfer worker`, `python -m qinfer.worker` and workers/gpu_worker.py.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from qinfer import metrics
from qinfer.config import Settings
from qinfer.contracts.engine_config import EngineConfig, check_engine_config
from qinfer.errors import NoRedisError
from qinfer.queue.connection import connect
from qinfer.queue.consumer import Consumer
from qinfer.queue.keys import Keys
from qinfer.queue.outage import connection_options
from qinfer.queue.writer import ResultWriter
from qinfer.worker.health import Heartbeat
from qinfer.worker.loop import Worker


def run_worker(settings: Settings, engine_config: EngineConfig) -> None:
    if not settings.redis_url:
        raise NoRedisError("no Redis URL: pass --redis URL or set QINFER_REDIS_URL (or use `qinfer up`)")
    check_engine_config(engine_config)               # at once, before the engine's imports
    from qinfer.engine.llm_engine import LLMEngine   # torch: only a worker needs it

    name = settings.worker_name or f"{socket.gethostname()}-{os.getpid()}"
    model_name = settings.served_model_name or Path(engine_config.model).resolve().name
    engine = LLMEngine(engine_config)
    client, keys = connect(settings.redis_url, **connection_options(settings)), Keys(settings.key_prefix)
    metrics.serve(settings.metrics_port)
    Worker(engine, Consumer(client, keys, model_name, name, settings), ResultWriter(client, keys, name, settings),
           Heartbeat(client, keys, name, model_name, settings.heartbeat_ttl_s), settings, model_name).run()
