"""Client and AsyncClient: submit jobs, read, wait for and stream results, cancel.

Light: redis-py and pydantic only, so a web app can enqueue with the light install.
"""
from __future__ import annotations

import time
from typing import AsyncIterator, Iterable, Iterator, Optional

from qinfer.config import Settings, get_settings
from qinfer.errors import JobNotFoundError, JobTimeoutError, NoRedisError
from qinfer.queue import connection, producer, scripts
from qinfer.queue.connection import register_script
from qinfer.queue.keys import Keys
from qinfer.queue.records import parse_event, result_from_hash
from qinfer.schema import JobRequest, JobResult, JobStatus, StreamDelta

# Blocking calls wait in slices shorter than redis-py's socket timeout, re-checking between.
_BLOCK_S = 1.0


def _url(url: Optional[str], settings: Settings) -> str:
    url = url or settings.redis_url
    if not url:
        raise NoRedisError("no Redis URL: pass Client(url) or set QINFER_REDIS_URL "
                           "(`qinfer up` prints one for its embedded Redis)")
    return url


def _block_s(deadline: Optional[float]) -> float:
    """How long the next blocking call may wait (never 0: that means forever to Redis)."""
    if deadline is None:
        return _BLOCK_S
    return min(_BLOCK_S, max(deadline - time.monotonic(), 0.001))


class _Base:
    connect: staticmethod   # queue.connection.connect or connect_async: the one difference in set-up

    def __init__(self, url: Optional[str] = None, *, settings: Optional[Settings] = None):
        self.settings = settings or get_settings()
        self.url = _url(url, self.settings)
        self.keys = Keys(self.settings.key_prefix)
        self.redis = self.connect(self.url)
        self._submit = register_script(self.redis, scripts.SUBMIT)
        self._cancel = register_script(self.redis, scripts.CANCEL)

    def _request(self, request: Optional[producer.RequestLike], fields: dict) -> JobRequest:
        if request is None:
            request = {k: v for k, v in fields.items() if v is not None}
        return producer.as_request(request, self.settings)

    def _submit_chunks(self, requests: Iterable[producer.RequestLike]
                       ) -> Iterator[tuple[list[JobRequest], list[tuple[list, list]]]]:
        """submit_many's round trips: per chunk, the requests and their SUBMIT calls.
        Every request is checked before the first chunk comes out."""
        reqs = [producer.as_request(r, self.settings) for r in requests]
        for chunk in producer.chunks(reqs, self.settings.submit_chunk_size):
            yield chunk, [producer.submit_call(self.keys, self.settings, req) for req in chunk]

    def _submit_ids(self, chunk: list[JobRequest], replies: list) -> list[str]:
        return [producer.parse_submit_reply(reply, req, self.settings) for req, reply in zip(chunk, replies)]

    def _result(self, job_id: str, raw: dict) -> JobResult:
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (never submitted, or its result expired)")
        return result_from_hash(job_id, raw)


class Client(_Base):
    """Synchronous client. `url` defaults to QINFER_REDIS_URL."""

    connect = staticmethod(connection.connect)

    def submit(self, request: Optional[producer.RequestLike] = None, /, **fields) -> str:
        """Enqueue one job (a JobRequest, a dict, or JobRequest fields as keywords); returns its id."""
        req = self._request(request, fields)
        keys, args = producer.submit_call(self.keys, self.settings, req)
        pipe = self.redis.pipeline(transaction=False)
        self._submit(keys, args, client=pipe)
        pipe.sadd(self.keys.models(), req.model)
        return producer.parse_submit_reply(pipe.execute()[0], req, self.settings)

    def submit_many(self, requests: Iterable[producer.RequestLike]) -> list[str]:
        """Enqueue many jobs, one pipelined round trip per chunk. Every request is checked
        before the first write; an admission refusal raises after the jobs before it were
        enqueued (each submit is atomic on its own)."""
        ids: list[str] = []
        for chunk, calls in self._submit_chunks(requests):
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                self._submit(keys, args, client=pipe)
            pipe.sadd(self.keys.models(), *{req.model for req in chunk})
            ids += self._submit_ids(chunk, pipe.execute()[:-1])
        return ids

    def get(self, job_id: str) -> JobResult:
        """Status and, once terminal, result or error. Never blocks."""
        return self._result(job_id, self.redis.hgetall(self.keys.job(job_id)))

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobResult:
        """Block until the job is terminal (no polling: BLMOVE on its done list)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.keys.job_done(job_id)
        while True:
            result = self.get(job_id)
            if result.is_terminal:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} still {result.status.value} after {timeout}s")
            # Rotating the one element back wakes every waiter and keeps it for later ones.
            self.redis.blmove(done, done, _block_s(deadline), "LEFT", "RIGHT")

    def stream(self, job_id: str, timeout: Optional[float] = None) -> Iterator[StreamDelta]:
        """Token deltas in order (jobs submitted with stream=True), ending at the job's end."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events, last_id = self.keys.job_events(job_id), "0-0"
        self.get(job_id)     # raises JobNotFoundError early
        while True:
            reply = self.redis.xread({events: last_id}, block=int(_block_s(deadline) * 1000), count=256)
            for last_id, fields in (reply[0][1] if reply else []):
                kind, value = parse_event(fields)
                if kind == "end":
                    return
                yield value
            if not reply and self.get(job_id).is_terminal and not self.redis.exists(events):
                return       # events already expired
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} did not end within {timeout}s")

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job now, or ask its worker to stop a running one.
        Returns the status right after: cancelled, running (stopping), or the terminal one."""
        model = self.redis.hget(self.keys.job(job_id), "model")
        if model is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        keys, args = producer.cancel_call(self.keys, self.settings, job_id, model.decode())
        return JobStatus(self._cancel(keys, args).decode())

    def close(self) -> None:
        self.redis.close()


class AsyncClient(_Base):
    """asyncio client (redis.asyncio); the same methods as Client, awaited."""

    connect = staticmethod(connection.connect_async)

    async def submit(self, request: Optional[producer.RequestLike] = None, /, **fields) -> str:
        req = self._request(request, fields)
        keys, args = producer.submit_call(self.keys, self.settings, req)
        pipe = self.redis.pipeline(transaction=False)
        await self._submit(keys, args, client=pipe)
        pipe.sadd(self.keys.models(), req.model)
        return producer.parse_submit_reply((await pipe.execute())[0], req, self.settings)

    async def submit_many(self, requests: Iterable[producer.RequestLike]) -> list[str]:
        ids: list[str] = []
        for chunk, calls in self._submit_chunks(requests):
            pipe = self.redis.pipeline(transaction=False)
            for keys, args in calls:
                await self._submit(keys, args, client=pipe)
            pipe.sadd(self.keys.models(), *{req.model for req in chunk})
            ids += self._submit_ids(chunk, (await pipe.execute())[:-1])
        return ids

    async def get(self, job_id: str) -> JobResult:
        return self._result(job_id, await self.redis.hgetall(self.keys.job(job_id)))

    async def wait(self, job_id: str, timeout: Optional[float] = None) -> JobResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        done = self.keys.job_done(job_id)
        while True:
            result = await self.get(job_id)
            if result.is_terminal:
                return result
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} still {result.status.value} after {timeout}s")
            await self.redis.blmove(done, done, _block_s(deadline), "LEFT", "RIGHT")

    async def stream(self, job_id: str, timeout: Optional[float] = None) -> AsyncIterator[StreamDelta]:
        deadline = None if timeout is None else time.monotonic() + timeout
        events, last_id = self.keys.job_events(job_id), "0-0"
        await self.get(job_id)
        while True:
            reply = await self.redis.xread({events: last_id}, block=int(_block_s(deadline) * 1000), count=256)
            for last_id, fields in (reply[0][1] if reply else []):
                kind, value = parse_event(fields)
                if kind == "end":
                    return
                yield value
            if not reply and (await self.get(job_id)).is_terminal and not await self.redis.exists(events):
                return
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeoutError(f"job {job_id} did not end within {timeout}s")

    async def cancel(self, job_id: str) -> JobStatus:
        model = await self.redis.hget(self.keys.job(job_id), "model")
        if model is None:
            raise JobNotFoundError(f"no job {job_id!r}")
        keys, args = producer.cancel_call(self.keys, self.settings, job_id, model.decode())
        return JobStatus((await self._cancel(keys, args)).decode())

    async def aclose(self) -> None:
        await self.redis.aclose()
