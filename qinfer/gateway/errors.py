"""Errors in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
HTTP status the official clients map to their exception classes."""
from __future__ import annotations

import logging
from typing import Optional

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from qinfer.errors import IdempotencyConflictError, InvalidRequestError, QueueFullError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def not_found(kind: str, name: str, param: Optional[str] = None) -> APIError:
    return APIError(404, f"no {kind} {name!r}", param=param, code=f"{kind.replace(' ', '_')}_not_found")


def validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """400 naming the first invalid field, e.g. `temperature: Input should be ...`."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": str(exc)}
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    message = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'request'}: "
                        f"{e.get('msg')}" for e in errors[:5])
    return APIError(400, message or str(exc), param=param)


def install_handlers(app: FastAPI) -> None:
    """Every failure a request can meet, answered in OpenAI's shape."""
    handlers = {
        APIError: lambda exc: exc,
        RequestValidationError: validation_error,
        ValidationError: validation_error,
        InvalidRequestError: lambda exc: APIError(400, str(exc)),
        QueueFullError: lambda exc: APIError(429, str(exc), "rate_limit_error", code="queue_full"),
        IdempotencyConflictError: lambda exc: APIError(409, str(exc), code="idempotency_conflict"),
        redis.ConnectionError: _redis_down,
        redis.TimeoutError: _redis_down,
        HTTPException: lambda exc: APIError(exc.status_code, str(exc.detail), _type_of(exc.status_code)),
    }
    for exc_class, to_api_error in handlers.items():
        app.add_exception_handler(exc_class, _handler(to_api_error))


def _handler(to_api_error):
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return to_api_error(exc).response()
    return handle


def _redis_down(exc: Exception) -> APIError:
    log.warning("Redis unreachable: %s", exc)
    return APIError(503, f"the job queue (Redis) is unreachable: {exc}", "service_unavailable",
                    code="redis_unavailable")


def _type_of(status: int) -> str:
    return "invalid_request_error" if status < 500 else "server_error"
