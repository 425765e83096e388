"""Wire types of the OpenAI Files and Batch APIs, as the gateway serves them.

Light module (pydantic only): the queue's batch records and the callbacks
worker's batch webhooks build these without the gateway's web stack.
Field names and meanings are OpenAI's (https://platform.openai.com/docs/api-reference/batch).
"""
from __future__ import annotations

import enum
from typing import Optional

from pydantic import BaseModel, Field

BATCH_ENDPOINTS = ("/v1/chat/completions", "/v1/completions")


class BatchStatus(str, enum.Enum):
    VALIDATING = "validating"
    FAILED = "failed"            # validation refused the input file
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"    # output and error files being written
    COMPLETED = "completed"
    EXPIRED = "expired"          # the completion window ended first
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (BatchStatus.FAILED, BatchStatus.COMPLETED, BatchStatus.EXPIRED, BatchStatus.CANCELLED)


class BatchRequestCounts(BaseModel):
    total: int = 0
    completed: int = 0           # lines answered in the output file
    failed: int = 0              # lines answered in the error file


class BatchLineError(BaseModel):
    """Why validation refused one line (`line` counts from 1) or the whole file (`line` None)."""

    code: str
    message: str
    param: Optional[str] = None
    line: Optional[int] = None


class BatchErrors(BaseModel):
    object: str = "list"
    data: list[BatchLineError] = Field(default_factory=list)


class Batch(BaseModel):
    id: str
    object: str = "batch"
    endpoint: str
    errors: Optional[BatchErrors] = None
    input_file_id: str
    completion_window: str
    status: BatchStatus
    output_file_id: Optional[str] = None
    error_file_id: Optional[str] = None
    created_at: int
    in_progress_at: Optional[int] = None
    expires_at: Optional[int] = None
    finalizing_at: Optional[int] = None
    completed_at: Optional[int] = None
    failed_at: Optional[int] = None
    expired_at: Optional[int] = None
    cancelling_at: Optional[int] = None
    cancelled_at: Optional[int] = None
    request_counts: BatchRequestCounts = Field(default_factory=BatchRequestCounts)
    metadata: Optional[dict[str, str]] = None
    model: Optional[str] = None


class FileObject(BaseModel):
    id: str
    object: str = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str                 # batch (uploads) | batch_output (output and error files)
    status: str = "processed"
