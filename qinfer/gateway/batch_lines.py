"""A batch input file, line by line: parsed, checked, and turned into fleet jobs.

Each line is `{"custom_id", "method": "POST", "url": <the batch's endpoint>, "body"}`,
the body being what that endpoint takes. Validation reports every bad line (up to
MAX_REPORTED_ERRORS) so the whole file can be fixed at once.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

from pydantic import ValidationError

from qinfer.batch_types import BatchLineError
from qinfer.config import Settings
from qinfer.errors import InvalidRequestError
from qinfer.gateway.openai_requests import API_KEY_METADATA, ChatCompletionRequest, CompletionRequest
from qinfer.queue.producer import as_request
from qinfer.schema import JobRequest

MAX_REPORTED_ERRORS = 100
BODY_MODELS = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


@dataclass
class BatchLine:
    number: int                # 1-based line number in the input file
    custom_id: str
    job: JobRequest            # the body as a job, before the batch's priority, ids and key name


@dataclass
class ParsedInput:
    lines: list[BatchLine] = field(default_factory=list)
    errors: list[BatchLineError] = field(default_factory=list)
    num_errors: int = 0

    def refuse(self, number: Optional[int], code: str, message: str, param: Optional[str] = None) -> None:
        self.num_errors += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(BatchLineError(code=code, message=message, param=param, line=number))

    def reported_errors(self) -> list[BatchLineError]:
        hidden = self.num_errors - len(self.errors)
        more = [BatchLineError(code="too_many_errors", message=f"{hidden} more lines have errors")] if hidden else []
        return self.errors + more


def parse_input(raw_lines: Iterable[bytes], endpoint: str, settings: Settings,
                is_served: Callable[[str], bool] = lambda model: True) -> ParsedInput:
    """Every line checked: JSON, unique custom_id, method, url, body, a served model."""
    parsed, seen = ParsedInput(), set()
    for number, raw in enumerate(raw_lines, start=1):
        if not raw.strip():
            continue
        line = _parse_line(parsed, number, raw, endpoint, settings)
        if line is None:
            continue
        if line.custom_id in seen:
            parsed.refuse(number, "duplicate_custom_id", f"custom_id {line.custom_id!r} is used twice", "custom_id")
        elif not is_served(line.job.model):
            parsed.refuse(number, "model_not_found",
                          f"the model {line.job.model!r} does not exist or no live worker serves it", "body.model")
        else:
            parsed.lines.append(line)
        seen.add(line.custom_id)
    if not parsed.lines and not parsed.num_errors:
        parsed.refuse(None, "empty_file", "the input file has no requests")
    if len(parsed.lines) > settings.batch_max_lines:
        parsed.refuse(None, "too_many_lines", f"{len(parsed.lines)} lines; a batch takes at most "
                                              f"{settings.batch_max_lines} (QINFER_BATCH_MAX_LINES)")
    return parsed


def _parse_line(parsed: ParsedInput, number: int, raw: bytes, endpoint: str,
                settings: Settings) -> Optional[BatchLine]:
    try:
        entry = json.loads(raw)
    except ValueError as e:
        return parsed.refuse(number, "invalid_json", f"not valid JSON: {e}")
    if not isinstance(entry, dict):
        return parsed.refuse(number, "invalid_json", "a line must be a JSON object")
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return parsed.refuse(number, "missing_custom_id", "custom_id must be a non-empty string", "custom_id")
    if entry.get("method") != "POST":
        return parsed.refuse(number, "invalid_method", f"method must be POST (got {entry.get('method')!r})",
                             "method")
    if entry.get("url") != endpoint:
        return parsed.refuse(number, "mismatched_url",
                             f"url {entry.get('url')!r} does not match the batch's endpoint {endpoint}", "url")
    try:
        body = BODY_MODELS[endpoint].model_validate(entry.get("body"))
        job = as_request(body.to_job(settings, ""), settings)      # sampling values, callback_url
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(["body", *(str(p) for p in err["loc"])])
        return parsed.refuse(number, "invalid_request", f"{param}: {err['msg']}", param)
    except InvalidRequestError as e:
        return parsed.refuse(number, "invalid_request", str(e), "body")
    if body.stream:
        return parsed.refuse(number, "invalid_request", "stream is not supported in a batch", "body.stream")
    return BatchLine(number, custom_id, job)


def line_job(line: BatchLine, batch: dict) -> JobRequest:
    """The fleet job of one line: the batch's priority, its ids in the metadata, and an
    idempotency key per (batch, custom_id), so enqueueing it again yields the same job."""
    digest = hashlib.sha256(line.custom_id.encode()).hexdigest()[:32]
    metadata = {**line.job.metadata, "batch_id": batch["id"], "custom_id": line.custom_id}
    if batch.get("owner"):
        metadata[API_KEY_METADATA] = batch["owner"]
    return line.job.model_copy(update={"priority": int(batch["priority"]), "metadata": metadata,
                                       "idempotency_key": f"{batch['id']}:{digest}"})
