"""/v1/batches: create, retrieve, cancel, list. The batch runner (batch_runner.py) does the work."""
from __future__ import annotations

import json
import re
import time
import uuid
from typing import Optional

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from qinfer.batch_types import BATCH_ENDPOINTS, BatchStatus
from qinfer.ssrf import Allowlist, check_callback_url
from qinfer.gateway.auth import caller
from qinfer.gateway.errors import APIError, not_found
from qinfer.gateway.files import owned_file
from qinfer.queue.batch_store import BatchStore, batch_from_hash
from qinfer.queue.keys import BATCH_ID_PREFIX

router = APIRouter()
WINDOW = re.compile(r"^([1-9][0-9]*)h$")


class BatchCreateRequest(BaseModel):
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: Optional[dict[str, str]] = Field(None, max_length=16)
    callback_url: Optional[str] = Field(None, description="qinfer's: webhook on the terminal status")


def _store(request: Request) -> BatchStore:
    return request.app.state.gateway.batches


def _owned(store: BatchStore, batch_id: str, key_name: str) -> dict:
    fields = store.get(batch_id)
    if fields is None or fields.get("owner", "") != key_name:
        raise not_found("batch", batch_id, "batch_id")
    return fields


@router.post("/v1/batches")
def create_batch(body: BatchCreateRequest, request: Request, key_name: str = Depends(caller)) -> dict:
    gateway = request.app.state.gateway
    settings = gateway.settings
    if body.endpoint not in BATCH_ENDPOINTS:
        raise APIError(400, f"endpoint must be one of {', '.join(BATCH_ENDPOINTS)}", param="endpoint")
    window = WINDOW.match(body.completion_window)
    if window is None:
        raise APIError(400, "completion_window must be hours, like '24h'", param="completion_window")
    stored = owned_file(gateway.files, body.input_file_id, key_name, "input_file_id")
    if stored.info.purpose != "batch":
        raise APIError(400, f"file {body.input_file_id} has purpose {stored.info.purpose!r}, not 'batch'",
                       param="input_file_id")
    if body.callback_url is not None:
        check_callback_url(body.callback_url, Allowlist.parse(settings.callback_allow))
    now = time.time()
    window_s = settings.batch_completion_window_s or int(window.group(1)) * 3600
    batch_id = f"{BATCH_ID_PREFIX}{uuid.uuid4().hex}"
    fields = {"id": batch_id, "endpoint": body.endpoint, "input_file_id": body.input_file_id,
              "completion_window": body.completion_window, "status": BatchStatus.VALIDATING.value,
              "created_at": f"{now:.3f}", "expires_at": f"{now + window_s:.3f}",
              "priority": settings.batch_priority, "callback_url": body.callback_url or ""}
    if body.metadata is not None:
        fields["metadata"] = json.dumps(body.metadata)
    gateway.batches.create(fields, key_name)
    return batch_from_hash(gateway.batches.get(batch_id)).model_dump(mode="json")


@router.get("/v1/batches/{batch_id}")
def retrieve_batch(batch_id: str, request: Request, key_name: str = Depends(caller)) -> dict:
    return batch_from_hash(_owned(_store(request), batch_id, key_name)).model_dump(mode="json")


@router.post("/v1/batches/{batch_id}/cancel")
def cancel_batch(batch_id: str, request: Request, key_name: str = Depends(caller)) -> dict:
    store = _store(request)
    _owned(store, batch_id, key_name)
    store.transition(batch_id, (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS), BatchStatus.CANCELLING,
                     {"cancelling_at": f"{time.time():.3f}"})
    batch = batch_from_hash(store.get(batch_id))
    if batch.status not in (BatchStatus.CANCELLING, BatchStatus.CANCELLED):
        raise APIError(409, f"batch {batch_id} is {batch.status.value}: only a validating or in_progress "
                            "batch can be cancelled", code="batch_not_cancellable")
    return batch.model_dump(mode="json")


@router.get("/v1/batches")
def list_batches(request: Request, after: Optional[str] = None, limit: int = Query(20, ge=1, le=100),
                 key_name: str = Depends(caller)) -> dict:
    found, has_more = _store(request).list(key_name, after, limit)
    data = [batch_from_hash(fields).model_dump(mode="json") for fields in found]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": has_more}
