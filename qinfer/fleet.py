"""A single-machine fleet: N worker processes on one Redis, restarted if they crash.

Used by `qinfer up`, the demo, the benchmark and the tests.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from typing import Optional

import redis

from qinfer.queue.keys import Keys
from qinfer.worker.health import list_workers

log = logging.getLogger(__name__)


def worker_command(model_dir: str, redis_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qinfer.worker", "--model", str(model_dir), "--redis", redis_url, *extra]


class Fleet:
    def __init__(self, model_dir: str, redis_url: str, num_workers: int = 1, *,
                 worker_args: tuple[str, ...] = (), env: Optional[dict] = None, key_prefix: str = "qinfer:"):
        self.model_dir, self.redis_url, self.num_workers = str(model_dir), redis_url, num_workers
        self.worker_args, self.keys = tuple(worker_args), Keys(key_prefix)
        self.env = {**os.environ, **(env or {})}
        self.processes: list[Optional[subprocess.Popen]] = [None] * num_workers

    def start(self) -> "Fleet":
        for i in range(self.num_workers):
            self._spawn(i)
        return self

    def _spawn(self, i: int) -> None:
        args = (*self.worker_args, "--name", f"{self._name_base()}-{i}")
        self.processes[i] = subprocess.Popen(worker_command(self.model_dir, self.redis_url, *args), env=self.env)

    def _name_base(self) -> str:
        return f"{os.uname().nodename}-{os.getpid()}"

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every worker has sent a heartbeat."""
        client = redis.Redis.from_url(self.redis_url)
        deadline = time.monotonic() + timeout
        while len(list_workers(client, self.keys)) < self.num_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready within {timeout}s")
            for p in self.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited with {p.returncode} while starting")
            time.sleep(0.1)

    def supervise(self) -> None:
        """Restart workers that died (a crash or kill -9); their jobs are reclaimed meanwhile."""
        for i, p in enumerate(self.processes):
            if p is not None and p.poll() is not None:
                log.warning("worker %d exited with %s; restarting", i, p.returncode)
                self._spawn(i)

    def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM every worker (they drain) and wait; returns their exit codes."""
        for p in self.processes:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
        codes = []
        for p in self.processes:
            try:
                codes.append(p.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        return codes
