"""Job results in OpenAI's response shapes: chat.completion, text_completion, their stream
chunks, and the error a job that did not succeed answers with."""
from __future__ import annotations

from typing import Optional

from qinfer.gateway.errors import APIError
from qinfer.schema import Completion, JobResult, JobStatus, TokenLogprob

# A job's error code -> the HTTP status its request answers with
_HTTP_STATUS = {"invalid_request": 400, "malformed_payload": 400, "unknown_model": 404,
                "queue_timeout": 504, "run_timeout": 504}


def _token_logprob(token: str, logprob: float) -> dict:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}


def _positions(c: Completion) -> list[tuple[TokenLogprob, list[TokenLogprob]]]:
    """Per generated token: its own entry and the top alternatives, most likely first (the job's
    vLLM-shaped logprobs: each position holds the token and the num_top_logprobs most likely)."""
    k = c.num_top_logprobs or 0
    positions = []
    for token_id, position in zip(c.token_ids, c.logprobs):
        ranked = sorted(position.values(), key=lambda e: e.rank if e.rank is not None else float("inf"))
        positions.append((position[str(token_id)], ranked[:k]))
    return positions


def _text(entry: TokenLogprob) -> str:
    return entry.decoded_token or ""


class ChatFormat:
    object, chunk_object, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl-"

    def choice(self, c: Completion) -> dict:
        return {"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": self.logprobs(c), "finish_reason": c.finish_reason}

    def delta(self, index: int, text: str, finish_reason: Optional[str] = None) -> dict:
        return {"index": index, "delta": {"content": text} if text else {}, "logprobs": None,
                "finish_reason": finish_reason}

    def opening(self, index: int) -> dict:
        return {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                "finish_reason": None}

    def logprobs(self, c: Completion) -> Optional[dict]:
        if c.logprobs is None:
            return None
        return {"content": [{**_token_logprob(_text(token), token.logprob),
                             "top_logprobs": [_token_logprob(_text(e), e.logprob) for e in top]}
                            for token, top in _positions(c)]}


class CompletionFormat:
    object, chunk_object, id_prefix = "text_completion", "text_completion", "cmpl-"

    def choice(self, c: Completion) -> dict:
        return {"index": c.index, "text": c.text, "logprobs": self.logprobs(c),
                "finish_reason": c.finish_reason}

    def delta(self, index: int, text: str, finish_reason: Optional[str] = None) -> dict:
        return {"index": index, "text": text, "logprobs": None, "finish_reason": finish_reason}

    def opening(self, index: int) -> Optional[dict]:
        return None      # text completions start with their first text

    def logprobs(self, c: Completion) -> Optional[dict]:
        if c.logprobs is None:
            return None
        positions = _positions(c)
        tokens = [_text(token) for token, _ in positions]
        offsets = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
        return {"tokens": tokens, "token_logprobs": [token.logprob for token, _ in positions],
                "top_logprobs": [{_text(e): e.logprob for e in top} for _, top in positions],
                "text_offset": offsets}


CHAT, COMPLETION = ChatFormat(), CompletionFormat()
FORMATS = {"/v1/chat/completions": CHAT, "/v1/completions": COMPLETION}


def response(fmt, result: JobResult, model: str, created: int) -> dict:
    return {"id": fmt.id_prefix + result.id, "object": fmt.object, "created": created, "model": model,
            "choices": [fmt.choice(c) for c in result.outputs], "usage": result.usage.model_dump()}


def chunk(fmt, job_id: str, model: str, created: int, choices: list[dict],
          usage: Optional[dict] = None) -> dict:
    body = {"id": fmt.id_prefix + job_id, "object": fmt.chunk_object, "created": created, "model": model,
            "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return body


def job_error(result: JobResult) -> APIError:
    """The error a job that ended other than succeeded answers with."""
    if result.status is JobStatus.CANCELLED:
        return APIError(409, f"job {result.id} was cancelled", code="cancelled")
    code = result.error.code if result.error else "engine_error"
    message = result.error.message if result.error else f"job {result.id} ended {result.status.value}"
    status = _HTTP_STATUS.get(code, 500)
    return APIError(status, message, "invalid_request_error" if status < 500 else "server_error", code=code)
