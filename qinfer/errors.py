"""Exceptions shared by the engine, the queue and the client (light: no torch), and how a
command reports the ones its user can act on: one line, no traceback."""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Optional


class QinferError(Exception):
    """Base of every qinfer error."""


class InvalidRequestError(QinferError, ValueError):
    """A request that can never run as given (empty or too-long prompt, bad token ids, ...).

    The message is written for the user who sent it.
    """


class JobNotFoundError(QinferError, KeyError):
    """No job with this id (never submitted, or its result expired)."""

    def __str__(self) -> str:          # KeyError would repr() the message
        return str(self.args[0]) if self.args else "job not found"


class JobTimeoutError(QinferError, TimeoutError):
    """Client.wait / stream gave up before the job reached a terminal state."""


class QueueFullError(QinferError):
    """A submit refused by admission control; nothing was written."""


class IdempotencyConflictError(QinferError):
    """The idempotency key was already used for a different request."""


class NoRedisError(QinferError):
    """No Redis URL was given and QINFER_REDIS_URL is not set."""


class UnknownModelError(InvalidRequestError):
    """No live worker serves the requested model (checked at submit; opt out with
    QINFER_REQUIRE_LIVE_MODEL=0 or Client(require_live_model=False)); nothing was written."""


class RedisUnavailableError(QinferError, ConnectionError):
    """Redis could not be reached (down, restarting, failing over, or the network between):
    raised by the client after its own timeout instead of a raw redis-py exception."""


class DurabilityError(QinferError):
    """A submit could not be made durable as configured (QINFER_SUBMIT_WAIT_AOF): the server
    cannot WAITAOF, or did not confirm the fsync in time. `job_ids`: jobs already enqueued
    (empty when nothing was written)."""

    def __init__(self, message: str, job_ids: tuple[str, ...] = ()):
        super().__init__(message)
        self.job_ids = job_ids


class EngineConfigError(QinferError, ValueError):
    """An engine setting that cannot work on this machine (model directory, device, dtype);
    raised before anything is loaded, with what to do instead."""


class MissingExtraError(QinferError, ImportError):
    """The light install was asked for something an extra provides (the engine: torch, ...)."""


# What each extra brings (pyproject.toml): an import of one of these failing means the extra is missing.
_EXTRA_MODULES = {"engine": {"torch", "transformers", "tokenizers", "safetensors", "numpy", "prometheus_client"},
                  "callbacks": {"celery", "kombu"}}


@contextlib.contextmanager
def needs_extra(what: str):
    """Turn a failed import of an extra's module inside the block into a MissingExtraError
    naming the pip install that fixes it; any other ModuleNotFoundError goes through."""
    try:
        yield
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        extra = next((name for name, modules in _EXTRA_MODULES.items() if top in modules), None)
        if extra is None:
            raise
        raise MissingExtraError(f"{what} needs the {extra} extra (no module named {top!r}): "
                                f"pip install 'qinfer[{extra}]'") from e


def run_command(body: Callable[[], int], prog: str, debug: bool = False) -> int:
    """Run a command's body. An error its user can act on ends it with one line on stderr
    (`prog: error: ...`, exit code 1); a bug, or any error with debug, keeps its traceback."""
    try:
        return body()
    except Exception as e:
        message = None if debug else explain(e)
        if message is None:
            raise
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def explain(e: BaseException) -> Optional[str]:
    """The one line for an error the user can act on; None for a bug (show its traceback)."""
    import redis
    from pydantic import ValidationError

    if isinstance(e, (RedisUnavailableError, redis.ConnectionError, redis.TimeoutError)):
        return f"cannot reach Redis ({e}): is it running? Check --redis / QINFER_REDIS_URL"
    if isinstance(e, QinferError):
        return str(e)
    if isinstance(e, ValidationError):
        return f"invalid {e.title}: " + "; ".join(_field_error(err) for err in e.errors())
    if isinstance(e, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return str(e)
    return None


def _field_error(err: dict) -> str:
    where = ".".join(str(part) for part in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    got = f" (got {value!r})" if isinstance(value, (str, int, float)) and err["loc"] else ""
    return f"{where}: {message}{got}" if where else message
