"""/v1/chat/completions and /v1/completions: each request is one fleet job. The answer
waits on the job, or streams server-sent events from its event stream; a client that
disconnects first cancels its job."""
from __future__ import annotations

import json
import logging
import time
from typing import AsyncIterator

import anyio
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse

from qinfer.client import AsyncClient
from qinfer.errors import JobTimeoutError
from qinfer.gateway.auth import caller
from qinfer.gateway.openai_requests import ChatCompletionRequest, CompletionRequest
from qinfer.gateway.openai_responses import CHAT, COMPLETION, chunk, job_error, response
from qinfer.schema import JobResult, JobStatus

log = logging.getLogger(__name__)
router = APIRouter()

DISCONNECT_CHECK_S = 0.5      # how often a waiting request looks for its client having gone
CLIENT_GONE = 499             # nginx's "client closed request": logged, never seen by anyone


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, key_name: str = Depends(caller)):
    return await _serve(request, body, CHAT, key_name)


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, key_name: str = Depends(caller)):
    return await _serve(request, body, COMPLETION, key_name)


async def _serve(request: Request, body, fmt, key_name: str):
    gateway = request.app.state.gateway
    await gateway.models.require(body.model)
    job_id = await gateway.jobs.submit(body.to_job(gateway.settings, key_name))
    created = int(time.time())
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(gateway.jobs, job_id, fmt, body.model, created, body.n, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")
    result = await _wait_while_connected(request, gateway.jobs, job_id)
    if result is None:
        return Response(status_code=CLIENT_GONE)
    if result.status is not JobStatus.SUCCEEDED:
        raise job_error(result)
    return response(fmt, result, body.model, created)


async def _wait_while_connected(request: Request, jobs: AsyncClient, job_id: str) -> JobResult | None:
    """The job's result; None (and the job cancelled) if the client went away first."""
    while True:
        try:
            return await jobs.wait(job_id, timeout=DISCONNECT_CHECK_S)
        except JobTimeoutError:
            if await request.is_disconnected():
                await _cancel(jobs, job_id)
                return None


async def _events(jobs: AsyncClient, job_id: str, fmt, model: str, created: int, n: int,
                  include_usage: bool) -> AsyncIterator[str]:
    """SSE: an opening chunk per choice, the token deltas, a closing chunk per choice with its
    finish_reason, usage if asked, then [DONE]. Starlette cancels this generator when the
    client disconnects; `finally` then cancels the job."""
    finished = False
    try:
        opening = [c for c in (fmt.opening(i) for i in range(n)) if c is not None]
        if opening:
            yield _sse(chunk(fmt, job_id, model, created, opening))
        async for delta in jobs.stream(job_id):
            yield _sse(chunk(fmt, job_id, model, created, [fmt.delta(delta.index, delta.text)]))
        result = await jobs.wait(job_id)
        finished = True
        async for event in _closing(fmt, result, model, created, include_usage):
            yield event
    finally:
        if not finished:
            with anyio.CancelScope(shield=True):
                await _cancel(jobs, job_id)


async def _closing(fmt, result: JobResult, model: str, created: int, include_usage: bool) -> AsyncIterator[str]:
    if result.status is not JobStatus.SUCCEEDED:
        yield _sse(job_error(result).body())
    else:
        closing = [fmt.delta(c.index, "", c.finish_reason) for c in result.outputs]
        yield _sse(chunk(fmt, result.id, model, created, closing))
        if include_usage:
            yield _sse(chunk(fmt, result.id, model, created, [], usage=result.usage.model_dump()))
    yield "data: [DONE]\n\n"


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


async def _cancel(jobs: AsyncClient, job_id: str) -> None:
    try:
        status = await jobs.cancel(job_id)
        log.info("client gone: job %s cancelled (%s)", job_id, status.value)
    except Exception:       # the client is gone either way; the job then runs to its end
        log.exception("client gone: could not cancel job %s", job_id)
