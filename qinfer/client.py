"""Client and AsyncClient: submit jobs, read, wait for and stream results, cancel.

Light: redis-py and pydantic only, so a web app can enqueue with the light install.
"""
from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Iterable, Iterator, Optional


from qinfer.config import Settings, get_settings
from qinfer.errors import DurabilityError, JobNotFoundError, JobTimeoutError, NoRedisError
from qinfer.queue import connection, producer, scripts
from qinfer.queue.connection import register_script
from qinfer.queue.keys import Keys
from qinfer.queue.outage import REDIS_DOWN, Outage, connection_options, typed_redis_errors
from qinfer.queue.records import parse_event, result_from_hash
from qinfer.queue.unserved import fail_unserved_call
from qinfer.schema import JobRequest, JobResult, JobStatus, StreamDelta

# Blocking calls wait in slices shorter than redis-py's socket timeout, re-checking between.
_BLOCK_S = 1.0


def _url(url: Optional[str], settings: Settings) -> str:
    url = url or settings.redis_url
    if not url:
        raise NoRedisError("no Redis URL: pass Client(url) or set QINFER_REDIS_URL "
                           "(`qinfer up` prints one for its embedded Redis)")
    return url


def _deadline(timeout: Optional[float]) -> Optional[float]:
    return None if timeout is None else time.monotonic() + timeout


def _block_s(deadline: Optional[float]) -> float:
    """How long the next blocking call may wait (never 0: that means forever to Redis)."""
    if deadline is None:
        return _BLOCK_S
    return min(_BLOCK_S, max(deadline - time.monotonic(), 0.001))


def _past(deadline: Optional[float]) -> bool:
    return deadline is not None and time.monotonic() >= deadline


class _Base:
    """Everything but the I/O: Client and AsyncClient differ only in awaiting their Redis calls.

    Redis being away: submit, get and cancel raise RedisUnavailableError at once; wait and
    stream retry with backoff and raise it after their timeout (or QINFER_REDIS_OUTAGE_LIMIT_S).
    """

    connect: staticmethod   # queue.connection.connect or connect_async: the one difference in set-up
    is_async: bool

    def __init__(self, url: Optional[str] = None, *, settings: Optional[Settings] = None,
                 require_live_model: Optional[bool] = None):
        """require_live_model: False lets submit enqueue for a model no live worker serves yet
        (default: QINFER_REQUIRE_LIVE_MODEL)."""
        settings = settings or get_settings()
        if require_live_model is not None:
            settings = settings.model_copy(update={"require_live_model": require_live_model})
        self.settings = settings
        self.url = _url(url, settings)
        self.keys = Keys(settings.key_prefix)
        self.redis = self.connect(self.url, **connection_options(settings, asyncio=self.is_async))
        self._submit = register_script(self.redis, scripts.SUBMIT)
        self._cancel = register_script(self.redis, scripts.CANCEL)
        self._fail_unserved = register_script(self.redis, scripts.FAIL_UNSERVED)
        self._durability_checked = not settings.submit_wait_aof

    def _request(self, request: Optional[producer.RequestLike], fields: dict) -> JobRequest:
        if request is None:
            request = {k: v for k, v in fields.items() if v is not None}
        return producer.as_request(request, self.settings)

    def _checked(self, requests: Iterable[producer.RequestLike]) -> list[JobRequest]:
        """Every request checked before the first write: one refused leaves the batch unwritten."""
        return [producer.as_request(r, self.settings) for r in requests]

    def _accept_server(self, info: dict) -> None:
        """QINFER_SUBMIT_WAIT_AOF: refuse, before anything is written, a server that cannot confirm."""
        problem = producer.wait_aof_problem(info, self.settings)
        if problem:
            raise DurabilityError(problem)
        self._durability_checked = True

    def _submit_calls(self, chunk: list[JobRequest]) -> list[tuple[list, list]]:
        return [producer.submit_call(self.keys, self.settings, req) for req in chunk]

    def _queue_wait_aof(self, pipe) -> None:
        if self.settings.submit_wait_aof:      # on the pipeline's connection: it waits for its writes
            pipe.execute_command(*producer.wait_aof_command(self.settings))

    def _submit_ids(self, chunk: list[JobRequest], replies: list, earlier: list[str]) -> list[str]:
        aof = replies.pop() if self.settings.submit_wait_aof else None
        ids = [producer.parse_submit_reply(reply, req, self.settings) for req, reply in zip(chunk, replies)]
        if aof is not None:
            producer.check_wait_aof_reply(aof, self.settings, earlier + ids)
        return ids

    def _outage(self) -> Outage:
        return Outage(self.settings.redis_outage_limit_s, "qinfer client")

    def _result(self, job_id: str, raw: dict) -> JobResult:
        if not raw:
            raise JobNotFoundError(f"no job {job_id!r} (never submitted, or its result expired)")
        return result_from_hash(job_id, raw)

    def _unserved_call(self, job_id: str, raw: dict):
        return fail_unserved_call(self.keys, self.settings, job_id, raw) if raw else None


class Client(_Base):
    """Synchronous client. `url` defaults to QINFER_REDIS_URL."""

    connect = staticmethod(connection.connect)
    is_async = False

    def submit(self, request: Optional[producer.RequestLike] = None, /, **fields) -> str:
        """Enqueue one job (a JobRequest, a dict, or JobRequest fields as keywords); returns its id."""
        return self._enqueue([self._request(request, fields)], check_live=True)[0]

    def submit_many(self, requests: Iterable[producer.RequestLike]) -> list[str]:
        """Enqueue many jobs, one pipelined round trip per chunk. Every request (and its model's
        liveness) is checked before the first write; an admission refusal raises after the jobs
        before it were enqueued (each submit is atomic on its own)."""
        return self._enqueue(self._checked(requests), check_live=True)

    def _enqueue(self, reqs: list[JobRequest], check_live: bool) -> list[str]:
        with typed_redis_errors():
            if not self._durability_checked:
                self._accept_server(self.redis.info())
            if check_live and self.settings.require_live_model:
                producer.check_live_models(reqs, self.redis.hgetall(self.keys.models_seen()), self.settings)
            ids: list[str] = []
            for chunk in producer.chunks(reqs, self.settings.submit_chunk_size):
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in self._submit_calls(chunk):
                    self._submit(keys, args, client=pipe)
                pipe.sadd(self.keys.models(), *{req.model for req in chunk})   # the deployment's slot
                self._queue_wait_aof(pipe)
                ids += self._submit_ids(chunk, pipe.execute(), ids)
            return ids

    def get(self, job_id: str) -> JobResult:
        """Status and, once terminal, result or error. Never blocks."""
        with typed_redis_errors():
            return self._result(job_id, self.redis.hgetall(self.keys.job(job_id)))

    def _poll(self, job_id: str) -> JobResult:
        """get(), after failing the job if its model has gone unserved too long (queue/unserved.py)."""
        raw = self.redis.hgetall(self.keys.job(job_id))
        call = self._unserved_call(job_id, raw)
        if call and self._fail_unserved(*call):
            raw = self.redis.hgetall(self.keys.job(job_id))
        return self._result(job_id, raw)

    def wait(self, job_id: str, timeout: Optional[float] = None) -> JobResult:
        """Block until the job is terminal (no polling: BLMOVE on its done list)."""
        deadline, outage, done = _deadline(timeout), self._outage(), self.keys.job_done(job_id)
        while True:
            try:
                result = self._poll(job_id)
                if result.is_terminal:
                    return result
                if _past(deadline):
                    raise JobTimeoutError(f"job {job_id} still {result.status.value} after {timeout}s")
                # Rotating the one element back wakes every waiter and keeps it for later ones.
                self.redis.blmove(done, done, _block_s(deadline), "LEFT", "RIGHT")
                outage.ended()
            except REDIS_DOWN as e:
                time.sleep(outage.failed(e, deadline))

    def stream(self, job_id: str, timeout: Optional[float] = None) -> Iterator[StreamDelta]:
        """Token deltas in order (jobs submitted with stream=True), ending at the job's end."""
        deadline, outage = _deadline(timeout), self._outage()
        events, last_id, known = self.keys.job_events(job_id), "0-0", False
        while True:
            try:
                if not known:
                    known = self._poll(job_id) is not None     # JobNotFoundError before the first read
                reply = self.redis.xread({events: last_id}, block=int(_block_s(deadline) * 1000), count=256)
                gone = not reply and self._poll(job_id).is_terminal and not self.redis.exists(events)
                outage.ended()
            except REDIS_DOWN as e:
                time.sleep(outage.failed(e, deadline))
                continue
            for last_id, fields in (reply[0][1] if reply else []):
                kind, value = parse_event(fields)
                if kind == "end":
                    return
                yield value
            if gone:
                return       # events already expired
            if _past(deadline):
                raise JobTimeoutError(f"job {job_id} did not end within {timeout}s")

    def cancel(self, job_id: str) -> JobStatus:
        """Cancel a queued job now, or ask its worker to stop a running one.
        Returns the status right after: cancelled, running (stopping), or the terminal one."""
        with typed_redis_errors():
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
    is_async = True

    async def submit(self, request: Optional[producer.RequestLike] = None, /, **fields) -> str:
        return (await self._enqueue([self._request(request, fields)], check_live=True))[0]

    async def submit_many(self, requests: Iterable[producer.RequestLike]) -> list[str]:
        return await self._enqueue(self._checked(requests), check_live=True)

    async def _enqueue(self, reqs: list[JobRequest], check_live: bool) -> list[str]:
        with typed_redis_errors():
            if not self._durability_checked:
                self._accept_server(await self.redis.info())
            if check_live and self.settings.require_live_model:
                seen = await self.redis.hgetall(self.keys.models_seen())
                producer.check_live_models(reqs, seen, self.settings)
            ids: list[str] = []
            for chunk in producer.chunks(reqs, self.settings.submit_chunk_size):
                pipe = self.redis.pipeline(transaction=False)
                for keys, args in self._submit_calls(chunk):
                    await self._submit(keys, args, client=pipe)
                pipe.sadd(self.keys.models(), *{req.model for req in chunk})   # the deployment's slot
                self._queue_wait_aof(pipe)
                ids += self._submit_ids(chunk, await pipe.execute(), ids)
            return ids

    async def get(self, job_id: str) -> JobResult:
        with typed_redis_errors():
            return self._result(job_id, await self.redis.hgetall(self.keys.job(job_id)))

    async def _poll(self, job_id: str) -> JobResult:
        raw = await self.redis.hgetall(self.keys.job(job_id))
        call = self._unserved_call(job_id, raw)
        if call and await self._fail_unserved(*call):
            raw = await self.redis.hgetall(self.keys.job(job_id))
        return self._result(job_id, raw)

    async def wait(self, job_id: str, timeout: Optional[float] = None) -> JobResult:
        deadline, outage, done = _deadline(timeout), self._outage(), self.keys.job_done(job_id)
        while True:
            try:
                result = await self._poll(job_id)
                if result.is_terminal:
                    return result
                if _past(deadline):
                    raise JobTimeoutError(f"job {job_id} still {result.status.value} after {timeout}s")
                await self.redis.blmove(done, done, _block_s(deadline), "LEFT", "RIGHT")
                outage.ended()
            except REDIS_DOWN as e:
                await asyncio.sleep(outage.failed(e, deadline))

    async def stream(self, job_id: str, timeout: Optional[float] = None) -> AsyncIterator[StreamDelta]:
        deadline, outage = _deadline(timeout), self._outage()
        events, last_id, known = self.keys.job_events(job_id), "0-0", False
        while True:
            try:
                if not known:
                    known = await self._poll(job_id) is not None
                reply = await self.redis.xread({events: last_id}, block=int(_block_s(deadline) * 1000), count=256)
                gone = not reply and (await self._poll(job_id)).is_terminal and not await self.redis.exists(events)
                outage.ended()
            except REDIS_DOWN as e:
                await asyncio.sleep(outage.failed(e, deadline))
                continue
            for last_id, fields in (reply[0][1] if reply else []):
                kind, value = parse_event(fields)
                if kind == "end":
                    return
                yield value
            if gone:
                return
            if _past(deadline):
                raise JobTimeoutError(f"job {job_id} did not end within {timeout}s")

    async def cancel(self, job_id: str) -> JobStatus:
        with typed_redis_errors():
            model = await self.redis.hget(self.keys.job(job_id), "model")
            if model is None:
                raise JobNotFoundError(f"no job {job_id!r}")
            keys, args = producer.cancel_call(self.keys, self.settings, job_id, model.decode())
            return JobStatus((await self._cancel(keys, args)).decode())

    async def aclose(self) -> None:
        await self.redis.aclose()
