"""The gateway's ASGI app: its state (clients, stores), routes, error handlers, the batch
runner thread, /health and /metrics."""
from __future__ import annotations

import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import redis
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qinfer import metrics
from qinfer.client import AsyncClient, Client
from qinfer.config import Settings, get_settings
from qinfer.gateway import batches, completions, files, models
from qinfer.gateway.batch_runner import BatchRunner
from qinfer.gateway.errors import install_handlers
from qinfer.gateway.file_store import DirectoryFileStore, FileStore
from qinfer.gateway.models import ModelDirectory
from qinfer.queue.batch_store import BatchStore
from qinfer.queue.connection import connect


@dataclass
class Gateway:
    """Everything a request handler uses; nothing here is state of its own."""

    settings: Settings
    jobs: AsyncClient            # interactive requests: submit, wait, stream, cancel
    client: Client               # the batch runner and the threadpool handlers
    batches: BatchStore
    files: FileStore
    models: ModelDirectory

    @classmethod
    def from_settings(cls, settings: Settings) -> "Gateway":
        client = Client(settings=settings)
        text_redis = connect(client.url, decode_responses=True)
        return cls(settings, AsyncClient(settings=settings), client,
                   BatchStore(text_redis, client.keys, settings.result_ttl_seconds),
                   DirectoryFileStore(Path(settings.files_dir)),
                   ModelDirectory(client.redis, client.keys, settings.gateway_models_cache_s))

    def runner(self) -> BatchRunner:
        return BatchRunner(self.settings, self.batches, self.files, self.client, self.models)


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The app; QINFER_* settings by default. It runs a batch runner thread while it serves."""
    gateway = Gateway.from_settings(settings or get_settings())
    app = FastAPI(title="qinfer gateway", lifespan=_lifespan)
    app.state.gateway = gateway
    install_handlers(app)
    for router in (models.router, completions.router, files.router, batches.router):
        app.include_router(router)
    app.add_middleware(RequestMetrics)
    app.add_api_route("/health", _health, methods=["GET"])
    app.add_api_route("/metrics", _metrics, methods=["GET"])
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI):
    gateway: Gateway = app.state.gateway
    runner = gateway.runner()
    thread = threading.Thread(target=runner.run, name="batch-runner", daemon=True)
    thread.start()
    try:
        yield
    finally:
        runner.stop.set()
        thread.join(timeout=10)
        await gateway.jobs.aclose()
        gateway.client.close()


class RequestMetrics:
    """Counts requests by route and status, and times them to their response headers.
    Plain ASGI (not @app.middleware): Starlette's BaseHTTPMiddleware hides a client's
    disconnect from the handler, which must see it to cancel the job."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.monotonic(), 500

        async def timed_send(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                metrics.gateway_request_latency.labels(_route(scope)).observe(time.monotonic() - start)
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            metrics.gateway_requests.labels(_route(scope), str(status)).inc()


def _route(scope) -> str:
    return getattr(scope.get("route"), "path", "unmatched")     # the template: /v1/batches/{batch_id}


async def _health(request: Request) -> JSONResponse:
    """200 while Redis answers; 503 (so a load balancer skips this replica) otherwise."""
    try:
        await request.app.state.gateway.jobs.redis.ping()
    except (redis.ConnectionError, redis.TimeoutError) as e:
        return JSONResponse({"status": "unavailable", "error": str(e)}, status_code=503)
    return JSONResponse({"status": "ok"})


def _metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
