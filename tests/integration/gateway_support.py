"""A real gateway process (`qinfer serve`, uvicorn) for the gateway tests, and helpers."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import urllib.error
import urllib.request
import openai

from qinfer.embedded_redis import free_port

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"
# What each gateway test process runs with, on top of the fleet's TEST_ENV.
GATEWAY_ENV = {"QINFER_BATCH_POLL_INTERVAL_S": "0.1", "QINFER_BATCH_LEASE_S": "2",
               "QINFER_GATEWAY_MODELS_CACHE_S": "0.2", "QINFER_LOG_LEVEL": "WARNING"}


class GatewayProcess:
    def __init__(self, redis_url: str, files_dir: Path, env: dict | None = None, args: tuple = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "qinfer.cli", "serve", "--redis", redis_url,
                        "--port", str(self.port), "--files-dir", str(files_dir), *args]
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **GATEWAY_ENV, **(env or {})}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0, healthy: bool = True) -> "GatewayProcess":
        """Start and wait until /health answers (200, or any answer when not `healthy`)."""
        self.process = subprocess.Popen(self.command, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode} while starting")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return self
            except urllib.error.HTTPError:
                if not healthy:
                    return self
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not healthy within {timeout}s")

    def openai(self, api_key: str = "unused", **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, **kwargs)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()


def batch_file(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def chat_line(custom_id: str, content: str, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "messages": [{"role": "user", "content": content}], **body}}


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def wait_batch(client: openai.OpenAI, batch_id: str, statuses: tuple, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")


def job_requests(r) -> list[tuple[str, str]]:
    """(key, request JSON) of every job hash in Redis, whatever slot its key is in."""
    found = []
    for key in r.scan_iter(match="*job:*", count=1000):
        key = key.decode() if isinstance(key, bytes) else key
        if key.rsplit(":", 2)[-2] == "job" and r.type(key) in (b"hash", "hash"):
            request = r.hget(key, "request")
            if request:
                found.append((key, request.decode() if isinstance(request, bytes) else request))
    return found


@contextlib.contextmanager
def paused(fleet):
    """SIGSTOP every worker of `fleet` for the block, SIGCONT after."""
    for process in fleet.processes:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for process in fleet.processes:
            os.kill(process.pid, signal.SIGCONT)
