"""`qinfer up` from a clean environment (no Redis URL): submit, get an answer and its signed
webhook from the fleet's own callbacks worker, stop. Ctrl-C as a terminal sends it (SIGINT to
the whole foreground process group): once drains, twice stops at once, every child stops, and
what was handed back is served by the next `qinfer up` on the same data directory."""
import os
import signal
import subprocess
import queue
import sys
import threading
import time
from pathlib import Path

import pytest

from qinfer.callbacks import verify
from qinfer.client import Client
from qinfer.config import Settings
from tests.callbacks_support import Receiver
from tests.fixtures_models import TINY_LLAMA
from tests.fixtures_redis import wait_until


def test_up_without_redis_url_or_model_serves_smollm2(smollm2_dir, tmp_path):
    """No --model: the fleet serves the real model from the per-machine cache (smollm2_dir made it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINFER_")}
    # the model from the machine's cache (XDG_CACHE_HOME kept); Redis's data in a directory of this test
    env.update(XDG_DATA_HOME=str(tmp_path), QINFER_LEASE_SECONDS="2", QINFER_DRAIN_GRACE_S="2",
               QINFER_CALLBACK_ALLOW="127.0.0.1")
    model = smollm2_dir.name
    proc = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "up", "--workers", "1"], env=env,
                            stdout=subprocess.PIPE, text=True)
    receiver = Receiver()
    try:
        banner = _read_banner(proc)
        url, secret = banner["QINFER_REDIS_URL"], banner["QINFER_WEBHOOK_SECRET"]   # generated: none was set
        client = Client(settings=Settings(redis_url=url, callback_allow="127.0.0.1"))
        job_id = client.submit(model=model, messages=[{"role": "user", "content": "What is the capital of France?"}],
                               sampling={"temperature": 0, "max_tokens": 16}, callback_url=receiver.url("/up"))
        result = client.wait(job_id, timeout=120)
        assert result.status.value == "succeeded" and "Paris" in result.text
        (post,) = wait_until(lambda: receiver.requests("/up"), timeout=30)
        assert verify(secret, post.headers, post.body)["data"]["id"] == job_id
        out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", url, "workers"],
                             capture_output=True, text=True, env=env, check=True).stdout
        assert model in out
        out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", url, "queues"],
                             capture_output=True, text=True, env=env, check=True).stdout
        assert out.splitlines()[1].split()[:3] == [model, "0", "0"]     # nothing queued or pending
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0          # workers and the callbacks worker all exited 0
        receiver.close()


def _read_banner(proc) -> dict:
    """The KEY=VALUE lines `qinfer up` prints, up to its callbacks line."""
    values = {}
    for line in proc.stdout:
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("QINFER_"):
            values[key] = value
        if line.startswith("callbacks worker up"):
            return values
    raise AssertionError(f"`qinfer up` exited ({proc.wait()}) without its banner; read {values}")


@pytest.fixture(scope="module")
def long_model(make_model_dir):
    """The tiny llama with a long context, so a job can outlast a drain."""
    return make_model_dir("llama", **TINY_LLAMA, max_position_embeddings=16384)


def up_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINFER_")}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), TMPDIR=str(tmp_path / "tmp"), QINFER_LEASE_SECONDS="30",
               QINFER_LOG_LEVEL="INFO", **extra)
    return env


class Up:
    """A `qinfer up` in its own process group, as a shell runs a foreground job."""

    def __init__(self, tmp_path: Path, model, name: str, **env: str):
        self.log = tmp_path / f"{name}.log"
        self.proc = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "up", "--model", str(model)],
                                     env=up_env(tmp_path, **env), stdout=subprocess.PIPE, text=True,
                                     stderr=self.log.open("w"), start_new_session=True)
        self.children: list[int] = []
        self.lines: queue.Queue = queue.Queue()      # stdout, read by a thread: no read blocks forever
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def wait_ready(self) -> "Up":
        url = self.read_until("QINFER_REDIS_URL=").strip().partition("=")[2]
        self.data_line = self.read_until("embedded Redis: data in").strip()
        self.read_until("callbacks worker up")
        self.client = Client(settings=Settings(redis_url=url))
        self.children = descendants(self.proc.pid)      # redis-server, the worker, the callbacks worker
        return self

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def read_until(self, prefix: str, timeout: float = 300.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"`qinfer up` printed no line starting {prefix!r} within {timeout}s") from None
            if line is None:
                raise AssertionError(f"`qinfer up` exited ({self.proc.wait()}) before a line starting {prefix!r}")
            if line.startswith(prefix):
                return line

    def ctrl_c(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT)

    def close(self) -> None:
        """After a failed test: stop it the quick way; kill what is left."""
        self.children = self.children or descendants(self.proc.pid)
        if self.proc.poll() is None:
            self.ctrl_c()
            time.sleep(0.5)
            self.ctrl_c()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for pid in filter(is_alive, self.children):
            os.kill(pid, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """Every process under pid, read from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def is_alive(pid: int) -> bool:
    """Running (a zombie, dead and not yet reaped, counts as stopped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def long_jobs(client: Client, model: Path, num_jobs: int, max_tokens: int) -> list[str]:
    """Jobs that are running and have produced tokens when this returns."""
    ids = client.submit_many([{"model": model.name, "prompt": f"story {i}", "stream": True,
                               "sampling": {"max_tokens": max_tokens, "ignore_eos": True}} for i in range(num_jobs)])
    wait_until(lambda: all(client.redis.xlen(client.keys.job_events(i)) for i in ids), timeout=120)
    return ids


def assert_stopped_cleanly(up: Up, tmp_path: Path) -> None:
    assert up.children and not [pid for pid in up.children if is_alive(pid)], "orphaned children"
    assert list((tmp_path / "tmp").iterdir()) == [], "temporary files left behind"


@pytest.fixture
def start_up(tmp_path):
    """start_up(model, name, **env) -> a ready Up; every one is closed after the test, whatever happened."""
    made: list[Up] = []

    def start(model, name: str, **env: str) -> Up:
        made.append(Up(tmp_path, model, name, **env))
        return made[-1].wait_ready()

    yield start
    for up in made:
        up.close()


def test_ctrl_c_once_drains_twice_stops_at_once_and_the_next_up_serves_what_was_handed_back(tmp_path,
                                                                                               long_model, start_up):
    model = long_model
    # a drain grace of 0: the running jobs are handed back as soon as the first Ctrl-C arrives
    first = start_up(model, "first", QINFER_DRAIN_GRACE_S="0")
    data_dir = tmp_path / "data" / "qinfer" / "redis"
    assert first.data_line.startswith(f"embedded Redis: data in {data_dir} (AOF")
    # 3,000 tokens: on a loaded 2-core machine 400 could all be written before the Ctrl-C reached
    # the worker, leaving nothing to hand back
    ids = long_jobs(first.client, model, 3, max_tokens=3000)
    first.ctrl_c()
    first.read_until("stopping: workers finish their jobs for up to 0s")
    assert first.proc.wait(timeout=60) == 0
    assert "handing back 3 jobs" in first.log.read_text()
    assert_stopped_cleanly(first, tmp_path)

    second = start_up(model, "second", QINFER_DRAIN_GRACE_S="600")
    results = [second.client.wait(job_id, timeout=300) for job_id in ids]
    assert [(r.status.value, len(r.token_ids)) for r in results] == [("succeeded", 3000)] * 3
    long_jobs(second.client, model, 2, max_tokens=16000)     # minutes of work: a drain would wait for them
    second.ctrl_c()
    second.read_until("stopping:")
    time.sleep(0.5)
    start = time.monotonic()
    second.ctrl_c()
    second.proc.wait(timeout=60)
    assert time.monotonic() - start < 20
    log = second.log.read_text()
    assert "again: handing back the running jobs now" in log and "handing back 2 jobs" in log
    assert "Traceback" not in log
    assert_stopped_cleanly(second, tmp_path)
