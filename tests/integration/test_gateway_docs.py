"""Every `sh` and `python` block of docs/gateway.md runs, in order, against a real fleet:
the first block (`qinfer serve`) starts the gateway (on a free port: QINFER_GATEWAY_PORT),
the others run in one working directory with the examples' http://127.0.0.1:8000 pointed
at it and `qinfer` on PATH."""
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import redis

from qinfer.embedded_redis import free_port
from qinfer.fleet import Fleet
from tests.fixtures_redis import TEST_ENV
from tests.integration.gateway_support import GATEWAY_ENV, REPO

DOC = REPO / "docs" / "gateway.md"
DOC_URL = "http://127.0.0.1:8000"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def runnable_blocks() -> list[tuple[str, str]]:
    return [(lang, code) for lang, code in FENCE.findall(DOC.read_text()) if lang in ("sh", "python")]


@pytest.fixture(scope="module")
def fleet(redis_server, tiny_llama_dir):
    redis.Redis.from_url(redis_server.url).flushall()
    fleet = Fleet(tiny_llama_dir, redis_server.url, 1, env={**TEST_ENV, "PYTHONPATH": str(REPO)},
                  worker_args=("--served-model-name", "tiny-llama", "--num-kv-blocks", "256"))
    fleet.start().wait_ready()
    yield fleet
    fleet.stop(timeout=30)


@pytest.fixture
def doc_env(fleet, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "qinfer").write_text(f'#!/bin/sh\nexec {sys.executable} -m qinfer.cli "$@"\n')
    (bin_dir / "qinfer").chmod(0o755)
    port = free_port()
    return {**os.environ, **GATEWAY_ENV, "PYTHONPATH": str(REPO), "PATH": f"{bin_dir}:{os.environ['PATH']}",
            "QINFER_REDIS_URL": fleet.redis_url, "QINFER_GATEWAY_PORT": str(port),
            "QINFER_GATEWAY_URL": f"http://127.0.0.1:{port}", "QINFER_FILES_DIR": str(tmp_path / "files")}


def _wait_healthy(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, "the doc's `qinfer serve` exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise TimeoutError("gateway not healthy")


def test_every_example_of_the_gateway_doc_runs(doc_env, tmp_path):
    (_, serve), *examples = runnable_blocks()
    assert serve.strip() == "qinfer serve" and len(examples) >= 5
    url = doc_env["QINFER_GATEWAY_URL"]
    gateway = subprocess.Popen(["bash", "-c", f"exec {serve}"], env=doc_env, cwd=tmp_path)
    try:
        _wait_healthy(url, gateway)
        outputs = [_run(lang, code.replace(DOC_URL, url), doc_env, tmp_path) for lang, code in examples]
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=20)
    assert "['tiny-llama']" in outputs[0]
    assert "data: [DONE]" in outputs[1]
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted(line["custom_id"] for line in out) == [f"question-{i}" for i in range(3)]


def _run(lang: str, code: str, env: dict, cwd) -> str:
    command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"doc example failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    return done.stdout
