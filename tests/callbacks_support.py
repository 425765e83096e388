"""Test helpers for webhook callbacks: a real HTTP receiver on loopback, job hashes
written the way the GPU worker writes them, and a real callbacks worker process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import redis

from qinfer.queue.writer import enqueue_callback
from qinfer.queue.keys import Keys
from qinfer.queue.records import output_json
from qinfer.schema import Completion, Usage

REPO = Path(__file__).resolve().parents[1]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes


@dataclass
class Plan:
    statuses: list            # answered in order; the last one repeats
    delay_s: float = 0.0
    headers: dict = field(default_factory=dict)


class Receiver:
    """ThreadingHTTPServer on 127.0.0.1 that records every request and answers per path."""

    def __init__(self):
        self.received: list[Received] = []
        self.plans: dict[str, Plan] = {}
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def plan(self, path: str, *statuses: int, delay_s: float = 0.0, headers: dict | None = None) -> None:
        self.plans[path] = Plan(list(statuses), delay_s, headers or {})

    def requests(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, path: str) -> tuple[int, float, dict]:
        with self._lock:
            plan = self.plans.get(path, Plan([200]))
            status = plan.statuses.pop(0) if len(plan.statuses) > 1 else plan.statuses[0]
            return status, plan.delay_s, plan.headers

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:   # recorded on arrival: a test can act while the answer is delayed
                    receiver.received.append(Received(self.path, dict(self.headers), body))
                status, delay_s, headers = receiver._answer(self.path)
                time.sleep(delay_s)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        return Handler


def write_finished_job(client: redis.Redis, keys: Keys, job_id: str, callback_url: str | None,
                       text: str = "hello", **request_extra) -> None:
    """A succeeded job hash, written with the callback outbox in one MULTI/EXEC like the worker."""
    request = {"model": "tiny", "prompt": "hi", "callback_url": callback_url,
               "metadata": {"user": "u1"}, **request_extra}
    output = output_json([Completion(text=text, token_ids=[1, 2], finish_reason="stop")],
                         Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3))
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.hset(keys.job(job_id), mapping={
        "request": json.dumps(request), "status": "succeeded", "model": "tiny", "output": output,
        "queued_at": now - 2, "started_at": now - 1, "finished_at": now, "attempts": 1})
    if callback_url:
        enqueue_callback(pipe, keys, job_id)
    pipe.execute()


class CallbacksWorker:
    """`python workers/callbacks_worker.py` in its own process group, configured by env."""

    def __init__(self, redis_url: str, log_path: Path, **settings: str):
        self.env = {**os.environ, "PYTHONPATH": str(REPO), "QINFER_REDIS_URL": redis_url,
                    "QINFER_WEBHOOK_SECRET": SECRET, "QINFER_CALLBACK_ALLOW": "127.0.0.1",
                    "QINFER_CALLBACK_RETRY_DELAYS": "0.2,0.4", "QINFER_CALLBACK_TIMEOUT_S": "3",
                    "QINFER_CALLBACK_VISIBILITY_TIMEOUT_S": "4", "QINFER_CALLBACK_RELAY_CLAIM_IDLE_S": "2",
                    **{f"QINFER_{k.upper()}": v for k, v in settings.items()}}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    def start(self) -> "CallbacksWorker":
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "workers" / "callbacks_worker.py")],
                                     env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def kill(self) -> None:
        """SIGKILL the whole process group: no warm shutdown, no message requeued by the worker."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def receiver():
    """HTTP receiver on loopback that records requests and answers per path (Receiver above)."""
    r = Receiver()
    yield r
    r.close()
