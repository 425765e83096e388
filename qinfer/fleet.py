"""A single-machine fleet: N worker processes on one Redis (and, if asked, one callbacks
worker), restarted if they crash.

Used by `qinfer up`, the demo, the benchmark and the tests. The children run in their own
sessions, so a Ctrl-C on the terminal reaches only this process, which stops them in order:
the first stop drains (SIGTERM), a second Ctrl-C during it stops them at once.
"""
from __future__ import annotations

import importlib.util
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Optional


from qinfer.config import Settings
from qinfer.queue.connection import connect
from qinfer.errors import QinferError
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


# After a second Ctrl-C, how long workers get to hand back what they hold before they are killed.
HURRY_S = 5.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class FleetStartError(QinferError, RuntimeError):
    """A worker of the fleet exited while starting (its own error is in its output above)."""


class StopSignals:
    """Counts SIGINT / SIGTERM / SIGHUP while active instead of raising KeyboardInterrupt, so a
    signal never cuts a start or a stop in half. Off the main thread it counts nothing."""

    def __init__(self):
        self.count = 0
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}
        return self

    def _on_signal(self, signum, frame) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


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
        args = (*self.worker_args, "--name", self._worker_name(i))
        command = worker_command(self.model_dir, self.redis_url, *args, module=self.worker_module)
        self.processes[i] = subprocess.Popen(command, env=self.env, start_new_session=True)

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
                                          stdout=subprocess.DEVNULL, start_new_session=True)

    def _worker_name(self, i: int) -> str:
        # a second fleet of one process (a test adding workers) gets names of its own
        return f"{os.uname().nodename}-{os.getpid()}" + (f"-f{self.number}" if self.number else "") + f"-{i}"

    def wait_ready(self, timeout: float = 120.0, cancelled: Callable[[], bool] = lambda: False) -> bool:
        """Block until every worker of this fleet has sent a heartbeat (True), or cancelled() turns
        true (False). Workers of other fleets on the same Redis do not count."""
        client = connect(self.redis_url)
        deadline = time.monotonic() + timeout
        mine = {self._worker_name(i) for i in range(self.num_workers)}
        while not mine <= {w["name"] for w in list_workers(client, self.keys)}:
            if cancelled():
                return False
            if time.monotonic() > deadline:
                raise FleetStartError(f"workers not ready within {timeout}s")
            for p in self.processes:
                if p.poll() is not None:
                    raise FleetStartError(f"a worker exited with code {p.returncode} while starting "
                                          "(its error is above)")
            if self.callbacks is not None and self.callbacks.poll() is not None:
                raise FleetStartError(f"the callbacks worker exited with code {self.callbacks.returncode} "
                                      "while starting (its error is above)")
            time.sleep(0.1)
        return True

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
        """SIGTERM every worker (they drain: finish what runs for up to QINFER_DRAIN_GRACE_S, hand
        back the rest) and wait, then the callbacks worker, so it still relays the webhooks of jobs
        finished while draining; returns their exit codes. A Ctrl-C (or SIGTERM) meanwhile hurries:
        a second SIGTERM makes each worker hand back what it holds now, and what still runs
        HURRY_S later is killed. What runs past `timeout` is killed too."""
        with StopSignals() as signals:
            hurry = lambda: signals.count > 0    # noqa: E731
            codes = _terminate([p for p in self.processes if p is not None], timeout, hurry)
            if self.callbacks is not None:
                codes += _terminate([self.callbacks], timeout, hurry)
        return codes


def _terminate(processes: list[subprocess.Popen], timeout: float, hurry: Callable[[], bool]) -> list[int]:
    """SIGTERM, wait; SIGTERM again when hurry() turns true; kill what runs past the deadline."""
    _signal_running(processes, signal.SIGTERM)
    deadline, hurried = time.monotonic() + timeout, False
    while any(p.poll() is None for p in processes):
        if not hurried and hurry():
            hurried = True
            _signal_running(processes, signal.SIGTERM)
            deadline = min(deadline, time.monotonic() + HURRY_S)
        if time.monotonic() >= deadline:
            _signal_running(processes, signal.SIGKILL)
        time.sleep(0.05)
    return [p.wait() for p in processes]


def _signal_running(processes: list[subprocess.Popen], signum: int) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signum)


def fleet_webhook_secret(settings: Settings) -> tuple[str, bool]:
    """The secret the fleet's callbacks worker signs with: QINFER_WEBHOOK_SECRET, or a fresh
    one (then True: only this run knows it, so it must be shown to the receivers)."""
    if settings.webhook_secret:
        return settings.webhook_secret, False
    return generate_secret(), True
