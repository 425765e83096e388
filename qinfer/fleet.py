"""A single-machine fleet: N worker processes on one Redis (and, if asked, one callbacks
worker), restarted if they crash.

Used by `qinfer up`, the demo, the benchmark and the tests.
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Optional


from qinfer.config import Settings
from qinfer.queue.connection import connect
from qinfer.queue.keys import Keys
from qinfer.signing import generate_secret
from qinfer.worker.health import list_workers

log = logging.getLogger(__name__)


_fleet_numbers = itertools.count()


def worker_command(model_dir: str, redis_url: str, *extra: str, module: str = "qinfer.worker") -> list[str]:
    return [sys.executable, "-m", module, "--model", str(model_dir), "--redis", redis_url, *extra]


def callbacks_worker_command() -> list[str]:
    # `qinfer.cli`, not workers/callbacks_worker.py: workers/ is not part of the installed package
    return [sys.executable, "-m", "qinfer.cli", "callbacks-worker"]


class Fleet:
    def __init__(self, model_dir: str, redis_url: str, num_workers: int = 1, *,
                 worker_args: tuple[str, ...] = (), env: Optional[dict] = None, key_prefix: str = "qinfer:",
                 webhook_secret: Optional[str] = None, worker_module: str = "qinfer.worker"):
        """webhook_secret: also run a callbacks worker signing with it (None: no callbacks worker).
        worker_module: run as `python -m` per worker (tests pass a wrapper of the entry point)."""
        self.model_dir, self.redis_url, self.num_workers = str(model_dir), redis_url, num_workers
        self.worker_args, self.worker_module, self.keys = tuple(worker_args), worker_module, Keys(key_prefix)
        self.env = {**os.environ, **(env or {})}
        # CPU workers share the machine's cores: torch's default (every core per process) makes N
        # workers spin against each other, several times slower than a share each.
        self.env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_workers)))
        self.processes: list[Optional[subprocess.Popen]] = [None] * num_workers
        self.webhook_secret = webhook_secret
        self.callbacks: Optional[subprocess.Popen] = None
        self.number = next(_fleet_numbers)

    def start(self) -> "Fleet":
        for i in range(self.num_workers):
            self._spawn(i)
        if self.webhook_secret:
            self._start_callbacks()
        return self

    def _spawn(self, i: int) -> None:
        args = (*self.worker_args, "--name", f"{self._name_base()}-{i}")
        command = worker_command(self.model_dir, self.redis_url, *args, module=self.worker_module)
        self.processes[i] = subprocess.Popen(command, env=self.env)

    def _start_callbacks(self) -> None:
        if importlib.util.find_spec("celery") is None:
            # without the callbacks extra the fleet still serves; deliveries wait in the outbox
            log.warning("no callbacks worker: celery is not installed (pip install 'qinfer[callbacks]'); "
                        "webhooks wait in the outbox until one runs")
            return
        self._spawn_callbacks()

    def _spawn_callbacks(self) -> None:
        env = {**self.env, "QINFER_REDIS_URL": self.redis_url, "QINFER_WEBHOOK_SECRET": self.webhook_secret}
        # stdout carries only Celery's start-up banner, which would break into the demo's output
        self.callbacks = subprocess.Popen(callbacks_worker_command(), env=env,
                                          stdout=subprocess.DEVNULL)

    def _name_base(self) -> str:
        # a second fleet of one process (a test adding workers) gets names of its own
        return f"{os.uname().nodename}-{os.getpid()}" + (f"-f{self.number}" if self.number else "")

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every worker has sent a heartbeat."""
        client = connect(self.redis_url)
        deadline = time.monotonic() + timeout
        while len(list_workers(client, self.keys)) < self.num_workers:
            if time.monotonic() > deadline:
                raise TimeoutError(f"workers not ready within {timeout}s")
            for p in self.processes:
                if p.poll() is not None:
                    raise RuntimeError(f"worker exited with {p.returncode} while starting")
            if self.callbacks is not None and self.callbacks.poll() is not None:
                raise RuntimeError(f"callbacks worker exited with {self.callbacks.returncode} while starting")
            time.sleep(0.1)

    def supervise(self) -> None:
        """Restart workers that died (a crash or kill -9); their jobs are reclaimed meanwhile."""
        for i, p in enumerate(self.processes):
            if p is not None and p.poll() is not None:
                log.warning("worker %d exited with %s; restarting", i, p.returncode)
                self._spawn(i)
        if self.callbacks is not None and self.callbacks.poll() is not None:
            log.warning("callbacks worker exited with %s; restarting", self.callbacks.returncode)
            self._spawn_callbacks()

    def stop(self, timeout: float = 60.0) -> list[int]:
        """SIGTERM every worker (they drain) and wait, then the callbacks worker, so it still
        relays the webhooks of jobs finished while draining; returns their exit codes."""
        codes = _terminate(self.processes, timeout)
        if self.callbacks is not None:
            codes += _terminate([self.callbacks], timeout)
        return codes


def _terminate(processes: list[subprocess.Popen], timeout: float) -> list[int]:
    """SIGTERM, then wait; kill what is still running after `timeout`."""
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    codes = []
    for p in processes:
        try:
            codes.append(p.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    return codes


def fleet_webhook_secret(settings: Settings) -> tuple[str, bool]:
    """The secret the fleet's callbacks worker signs with: QINFER_WEBHOOK_SECRET, or a fresh
    one (then True: only this run knows it, so it must be shown to the receivers)."""
    if settings.webhook_secret:
        return settings.webhook_secret, False
    return generate_secret(), True
