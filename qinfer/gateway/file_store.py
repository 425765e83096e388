"""The Files API's storage behind a small interface, and its default: a directory.

A file becomes visible only once its bytes and its metadata are both on disk
(written to a temporary name, fsynced, renamed): a gateway killed mid-upload or
mid-finalize leaves no half file, and nothing is ever held only in memory.
Several replicas share one directory (a volume in compose).
"""
from __future__ import annotations

import json
import os
import re
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Optional

from qinfer.batch_types import FileObject

FILE_ID = re.compile(r"^file-[A-Za-z0-9_-]{1,96}$")
READ_CHUNK = 1 << 20
_STALE_TEMP_S = 24 * 3600     # temporaries older than this were left by a killed process


def new_file_id() -> str:
    return f"file-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class StoredFile:
    info: FileObject
    owner: str            # the API key name that may read it ("" without keys)


class FileWriter(ABC):
    """A file being written; nobody sees it until commit()."""

    num_bytes: int = 0       # written so far

    @abstractmethod
    def write(self, data: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> FileObject: ...

    @abstractmethod
    def abort(self) -> None: ...


class FileStore(ABC):
    @abstractmethod
    def create(self, filename: str, purpose: str, owner: str, file_id: Optional[str] = None) -> FileWriter:
        """A writer for a new file; a given `file_id` is replaced as a whole on commit."""

    @abstractmethod
    def get(self, file_id: str) -> Optional[StoredFile]: ...

    @abstractmethod
    def chunks(self, file_id: str) -> Iterator[bytes]:
        """The file's bytes (FileNotFoundError if it is gone)."""

    @abstractmethod
    def list(self, owner: str) -> list[StoredFile]:
        """The owner's files, newest first."""

    @abstractmethod
    def delete(self, file_id: str) -> bool: ...


class DirectoryFileStore(FileStore):
    """<root>/<id> holds the bytes, <root>/<id>.json the metadata, <root>/.tmp the temporaries."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temporaries()

    def create(self, filename: str, purpose: str, owner: str, file_id: Optional[str] = None) -> FileWriter:
        return _DirectoryWriter(self, file_id or new_file_id(), filename, purpose, owner)

    def get(self, file_id: str) -> Optional[StoredFile]:
        if not FILE_ID.match(file_id):
            return None
        try:
            meta = json.loads((self.root / f"{file_id}.json").read_text())
        except FileNotFoundError:
            return None
        return StoredFile(FileObject(**meta["info"]), meta["owner"])

    def chunks(self, file_id: str) -> Iterator[bytes]:
        with open(self._data(file_id), "rb") as f:
            while chunk := f.read(READ_CHUNK):
                yield chunk

    def list(self, owner: str) -> list[StoredFile]:
        found = (self.get(p.name[:-len(".json")]) for p in self.root.glob("file-*.json"))
        mine = [f for f in found if f is not None and f.owner == owner]
        return sorted(mine, key=lambda f: (f.info.created_at, f.info.id), reverse=True)

    def delete(self, file_id: str) -> bool:
        if self.get(file_id) is None:
            return False
        (self.root / f"{file_id}.json").unlink(missing_ok=True)    # metadata first: gone at once
        self._data(file_id).unlink(missing_ok=True)
        return True

    def _data(self, file_id: str) -> Path:
        if not FILE_ID.match(file_id):
            raise FileNotFoundError(file_id)
        return self.root / file_id

    def _publish(self, temp: Path, target: Path) -> None:
        os.replace(temp, target)
        fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(fd)      # the rename itself survives a host crash
        finally:
            os.close(fd)

    def _temp_path(self) -> Path:
        return self.tmp / uuid.uuid4().hex

    def _remove_stale_temporaries(self) -> None:
        cutoff = time.time() - _STALE_TEMP_S
        for path in self.tmp.iterdir():
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)


class _DirectoryWriter(FileWriter):
    def __init__(self, store: DirectoryFileStore, file_id: str, filename: str, purpose: str, owner: str):
        if not FILE_ID.match(file_id):
            raise ValueError(f"invalid file id {file_id!r}")
        self.store, self.file_id, self.filename, self.purpose, self.owner = store, file_id, filename, purpose, owner
        self.path = store._temp_path()
        self.file: BinaryIO = open(self.path, "wb")
        self.num_bytes = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.num_bytes += len(data)

    def commit(self) -> FileObject:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        info = FileObject(id=self.file_id, bytes=self.num_bytes, created_at=int(time.time()),
                          filename=self.filename, purpose=self.purpose)
        self.store._publish(self.path, self.store.root / self.file_id)
        meta = self.store._temp_path()
        with open(meta, "w") as f:
            json.dump({"info": info.model_dump(), "owner": self.owner}, f)
            f.flush()
            os.fsync(f.fileno())
        self.store._publish(meta, self.store.root / f"{self.file_id}.json")
        return info

    def abort(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)
