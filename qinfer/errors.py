"""Exceptions shared by the engine, the queue and the client (light: no torch)."""


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
