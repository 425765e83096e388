"""The job hash <-> JobResult mapping, shared by the clients and the worker.

Job hash fields: request (JSON), status, model, priority, queued_at, started_at,
first_token_at, finished_at, attempts, duplicates, worker, tokens (admission
size), output (JSON: completions + usage + prompt_logprobs if asked), error (JSON),
last_error (text).
"""
from __future__ import annotations

import json
from typing import Any, Optional

from qinfer.schema import Completion, JobError, JobResult, JobStatus, StreamDelta, Timings, Usage


def _text(v: Any) -> Optional[str]:
    # "replace": a raw producer may have stored bytes that are not UTF-8 (the job fails, readably)
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _float(v: Any) -> Optional[float]:
    return float(v) if v not in (None, b"", "") else None


def result_from_hash(job_id: str, raw: dict) -> JobResult:
    h = {_text(k): _text(v) for k, v in raw.items()}
    output = json.loads(h["output"]) if h.get("output") else {}
    outputs = [Completion(**c) for c in output.get("outputs", [])]
    first = outputs[0] if outputs else Completion()
    return JobResult(
        id=job_id, status=JobStatus(h.get("status", "queued")), model=h.get("model"),
        text=first.text, token_ids=first.token_ids, finish_reason=first.finish_reason,
        logprobs=first.logprobs, prompt_logprobs=output.get("prompt_logprobs"), outputs=outputs,
        error=JobError(**json.loads(h["error"])) if h.get("error") else None,
        usage=Usage(**output.get("usage", {})),
        timings=Timings(**{k: _float(h.get(k)) for k in Timings.model_fields}),
        attempts=int(h.get("attempts") or 0), duplicates=int(h.get("duplicates") or 0),
        worker=h.get("worker"), metadata=load_request_json(h.get("request")).get("metadata") or {})


def load_request_json(request_json: Optional[str]) -> dict:
    """A stored request as a dict; {} for one that is not a JSON object (a raw producer's malformed
    payload, reported through the job's `error`), however deeply it nests."""
    try:
        request = json.loads(request_json or "{}")
    except (ValueError, RecursionError):
        return {}
    return request if isinstance(request, dict) else {}


def safe_text(text: str) -> str:
    """`text` as valid Unicode: an error message may quote a user's broken input."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def error_json(code: str, message: str) -> str:
    return JobError(code=code, message=safe_text(message)).model_dump_json()


def output_json(outputs: list[Completion], usage: Usage, prompt_logprobs: Optional[list] = None) -> str:
    """prompt_logprobs: JSON-ready (jobs.prompt_logprobs), None when the job asked for none."""
    body = {"outputs": [c.model_dump() for c in outputs], "usage": usage.model_dump()}
    if prompt_logprobs is not None:
        body["prompt_logprobs"] = prompt_logprobs
    return json.dumps(body)


def delta_fields(index: int, text: str, token_ids: list[int]) -> dict:
    return {"type": "delta", "index": index, "text": text, "token_ids": json.dumps(token_ids)}


def parse_event(fields: dict) -> tuple[str, Any]:
    """("delta", StreamDelta) or ("end", status string)."""
    f = {_text(k): _text(v) for k, v in fields.items()}
    if f.get("type") == "end":
        return "end", f.get("status")
    return "delta", StreamDelta(index=int(f.get("index", 0)), text=f.get("text", ""),
                                token_ids=json.loads(f.get("token_ids") or "[]"))
