"""/v1/files: upload (multipart, purpose=batch), list, retrieve, content, delete."""
from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from fastapi.responses import StreamingResponse

from qinfer.gateway.auth import caller
from qinfer.gateway.errors import APIError, not_found
from qinfer.gateway.file_store import READ_CHUNK, FileStore, StoredFile

router = APIRouter()
UPLOAD_PURPOSES = ("batch",)


def _store(request: Request) -> FileStore:
    return request.app.state.gateway.files


def owned_file(store: FileStore, file_id: str, key_name: str, param: str = "file_id") -> StoredFile:
    """The file if this key may read it; 404 (not 403: ids of others stay secret) otherwise."""
    stored = store.get(file_id)
    if stored is None or stored.owner != key_name:
        raise not_found("file", file_id, param)
    return stored


@router.post("/v1/files")
def upload_file(request: Request, file: UploadFile = File(...), purpose: str = Form(...),
                key_name: str = Depends(caller)) -> dict:
    if purpose not in UPLOAD_PURPOSES:
        raise APIError(400, f"purpose must be one of {', '.join(UPLOAD_PURPOSES)} (got {purpose!r})",
                       param="purpose")
    limit = request.app.state.gateway.settings.max_file_bytes
    writer = _store(request).create(file.filename or "upload.jsonl", purpose, key_name)
    try:
        while data := file.file.read(READ_CHUNK):
            writer.write(data)
            if writer.num_bytes > limit:
                raise APIError(400, f"file is larger than {limit} bytes (QINFER_MAX_FILE_BYTES)",
                               param="file", code="file_too_large")
        return writer.commit().model_dump()
    except BaseException:
        writer.abort()
        raise


@router.get("/v1/files")
def list_files(request: Request, purpose: Optional[str] = None, key_name: str = Depends(caller)) -> dict:
    files = [f.info.model_dump() for f in _store(request).list(key_name)
             if purpose is None or f.info.purpose == purpose]
    return {"object": "list", "data": files, "has_more": False}


@router.get("/v1/files/{file_id}")
def retrieve_file(file_id: str, request: Request, key_name: str = Depends(caller)) -> dict:
    return owned_file(_store(request), file_id, key_name).info.model_dump()


@router.get("/v1/files/{file_id}/content")
def file_content(file_id: str, request: Request, key_name: str = Depends(caller)) -> StreamingResponse:
    owned_file(_store(request), file_id, key_name)
    return StreamingResponse(_store(request).chunks(file_id), media_type="application/octet-stream")


@router.delete("/v1/files/{file_id}")
def delete_file(file_id: str, request: Request, key_name: str = Depends(caller)) -> dict:
    owned_file(_store(request), file_id, key_name)
    return {"id": file_id, "object": "file", "deleted": _store(request).delete(file_id)}
