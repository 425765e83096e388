"""The webhook message for a finished job, built from its job hash.

Body (the same bytes on every retry):
  {"type": "job.<status>", "timestamp": <finished_at>, "data": <JobResult>}
`data` is what Client.get returns: id, status, text/outputs or error, usage,
timings, metadata. A batch (the gateway's Batch API) sends
  {"type": "batch.<status>", "timestamp": <its terminal time>, "data": <Batch object>}
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Optional

from qinfer.queue.batch_store import batch_from_hash
from qinfer.queue.keys import BATCH_ID_PREFIX
from qinfer.queue.records import load_request_json, result_from_hash


@dataclass(frozen=True)
class WebhookDelivery:
    job_id: str
    url: str
    webhook_id: str            # stable per job and event: the receiver's dedup key
    body: bytes
    job_secret: Optional[str]  # the job's own signing secret, if it gave one


def build_delivery(job_id: str, fields: Mapping[str, str]) -> Optional[WebhookDelivery]:
    """The delivery for a job hash (or a batch hash), or None when it asked for no callback."""
    if job_id.startswith(BATCH_ID_PREFIX):
        return _batch_delivery(job_id, fields)
    request = load_request_json(fields.get("request"))
    url = request.get("callback_url")
    if not url:
        return None
    result = result_from_hash(job_id, fields)
    event = f"job.{result.status.value}"
    message = {"type": event, "timestamp": result.timings.finished_at,
               "data": result.model_dump(mode="json")}
    return WebhookDelivery(job_id, url, f"msg_{job_id}_{event}", _body(message), request.get("callback_secret"))


def _batch_delivery(batch_id: str, fields: Mapping[str, str]) -> Optional[WebhookDelivery]:
    url = fields.get("callback_url")
    if not url:
        return None
    batch = batch_from_hash(fields)
    event = f"batch.{batch.status.value}"
    finished_at = getattr(batch, f"{batch.status.value}_at")    # completed_at, failed_at, ...
    message = {"type": event, "timestamp": finished_at, "data": batch.model_dump(mode="json")}
    return WebhookDelivery(batch_id, url, f"msg_{batch_id}_{event}", _body(message), None)


def _body(message: dict) -> bytes:
    return json.dumps(message, separators=(",", ":"), sort_keys=True).encode()

