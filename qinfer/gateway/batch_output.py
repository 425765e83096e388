"""Lines of a batch's output and error files, in OpenAI's format:
  {"id": "batch_req_<job id>", "custom_id", "response": {"status_code", "request_id", "body"}, "error"}
A succeeded job goes to the output file with the body its endpoint would have answered;
a failed one to the error file with its HTTP error; a line the batch never finished
(cancelled, expired, never enqueued) to the error file with `error` set and no response."""
from __future__ import annotations

from typing import Optional

from qinfer.gateway.openai_responses import FORMATS, job_error, response
from qinfer.queue.records import result_from_hash
from qinfer.schema import JobStatus

UNFINISHED = {
    "expired": ("batch_expired", "This request could not be executed before the completion window expired."),
    "cancelled": ("batch_cancelled", "The batch was cancelled before this request finished."),
}


def answered_line(custom_id: str, job_id: str, job_hash: dict, endpoint: str,
                  outcome: str) -> tuple[bool, dict]:
    """(goes to the output file, line) for a line whose job was enqueued."""
    if not job_hash:
        return False, _line(custom_id, job_id, error={
            "code": "result_missing", "message": "the job's result expired (QINFER_RESULT_TTL_SECONDS)"})
    result = result_from_hash(job_id, job_hash)
    if result.status is JobStatus.SUCCEEDED:
        created = int(result.timings.finished_at or 0)
        body = response(FORMATS[endpoint], result, result.model, created)
        return True, _line(custom_id, job_id, {"status_code": 200, "request_id": job_id, "body": body})
    if result.status in (JobStatus.FAILED, JobStatus.EXPIRED):
        error = job_error(result)
        return False, _line(custom_id, job_id, {"status_code": error.status, "request_id": job_id,
                                                "body": error.body()})
    return False, unfinished_line(custom_id, outcome, job_id)


def unfinished_line(custom_id: str, outcome: str, job_id: Optional[str] = None) -> dict:
    code, message = UNFINISHED.get(outcome, UNFINISHED["cancelled"])
    return _line(custom_id, job_id, error={"code": code, "message": message})


def _line(custom_id: str, job_id: Optional[str], response_: Optional[dict] = None,
          error: Optional[dict] = None) -> dict:
    line_id = f"batch_req_{job_id}" if job_id else f"batch_req_unsent_{custom_id}"
    return {"id": line_id, "custom_id": custom_id, "response": response_, "error": error}
