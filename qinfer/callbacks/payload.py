"""The webhook message for a finished job, built from its job hash.

Body (the same bytes on every retry):
  {"type": "job.<status>", "timestamp": <finished_at>, "data": <JobResult>}
`data` is what Client.get returns: id, status, text/outputs or error, usage,
timings, metadata.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

from qinfer.queue.records import load_request_json, result_from_hash


@dataclass(frozen=True)
class WebhookDelivery:
    job_id: str
    url: str
    webhook_id: str            # stable per job and event: the receiver's dedup key
    body: bytes
    job_secret: Optional[str]  # the job's own signing secret, if it gave one


def build_delivery(job_id: str, fields: Mapping[str, str]) -> Optional[WebhookDelivery]:
    """The delivery for a job hash, or None when the job asked for no callback."""
    request = load_request_json(fields.get("request"))
    url = request.get("callback_url")
    if not url:
        return None
    result = result_from_hash(job_id, fields)
    event = f"job.{result.status.value}"
    message = {"type": event, "timestamp": result.timings.finished_at,
               "data": result.model_dump(mode="json")}
    body = json.dumps(message, separators=(",", ":"), sort_keys=True).encode()
    return WebhookDelivery(job_id, url, f"msg_{job_id}_{event}", body, request.get("callback_secret"))

