"""/v1/models: the models live workers serve, read from their heartbeats."""
from __future__ import annotations

import threading
import time

import anyio
import redis
from fastapi import APIRouter, Depends, Request

from qinfer.gateway.auth import caller
from qinfer.gateway.errors import APIError
from qinfer.queue.keys import Keys
from qinfer.worker.health import list_workers

router = APIRouter()


class ModelDirectory:
    """Served model name -> when its oldest live worker started; cached for `cache_s` so
    the unknown-model check costs no Redis round trip per request."""

    def __init__(self, r: redis.Redis, keys: Keys, cache_s: float):
        self.redis, self.keys, self.cache_s = r, keys, cache_s
        self._lock = threading.Lock()
        self._cached: tuple[float, dict[str, int]] = (float("-inf"), {})

    def served(self) -> dict[str, int]:
        with self._lock:
            read_at, models = self._cached
            if time.monotonic() - read_at < self.cache_s:
                return models
            models = {}
            for worker in list_workers(self.redis, self.keys):
                started = int(float(worker.get("started_at") or 0))
                models[worker["model"]] = min(models.get(worker["model"], started), started)
            self._cached = (time.monotonic(), models)
            return models

    def check(self, model: str, param: str = "model") -> None:
        if model not in self.served():
            raise APIError(404, f"the model {model!r} does not exist or no live worker serves it",
                           param=param, code="model_not_found")

    async def require(self, model: str) -> None:
        await anyio.to_thread.run_sync(self.check, model)


def model_card(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "qinfer"}


@router.get("/v1/models")
def list_models(request: Request, _: str = Depends(caller)) -> dict:
    served = request.app.state.gateway.models.served()
    return {"object": "list", "data": [model_card(name, created) for name, created in sorted(served.items())]}


@router.get("/v1/models/{model:path}")
def retrieve_model(model: str, request: Request, _: str = Depends(caller)) -> dict:
    directory = request.app.state.gateway.models
    directory.check(model)
    return model_card(model, directory.served()[model])
