"""`qinfer up` from a clean environment (no Redis URL): submit, get an answer, stop."""
import os
import signal
import subprocess
import sys

from qinfer.client import Client
from qinfer.config import Settings


def test_up_without_redis_url_serves_jobs(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINFER_")}
    env.update(XDG_CACHE_HOME=str(tmp_path), QINFER_LEASE_SECONDS="2", QINFER_DRAIN_GRACE_S="2")
    proc = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "up", "--workers", "1"], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        url = _read_url(proc)
        client = Client(settings=Settings(redis_url=url))
        job_id = client.submit(model="tiny-llama", prompt="The quick brown fox",
                               sampling={"temperature": 0, "max_tokens": 8, "ignore_eos": True})
        result = client.wait(job_id, timeout=60)
        assert result.status.value == "succeeded" and len(result.token_ids) == 8
        out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", url, "workers"],
                             capture_output=True, text=True, env=env, check=True).stdout
        assert "tiny-llama" in out
        out = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", url, "queues"],
                             capture_output=True, text=True, env=env, check=True).stdout
        assert out.splitlines()[1].split()[:3] == ["tiny-llama", "0", "0"]     # nothing queued or pending
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def _read_url(proc) -> str:
    for line in proc.stdout:
        if line.startswith("QINFER_REDIS_URL="):
            return line.strip().split("=", 1)[1]
    raise AssertionError(f"`qinfer up` exited ({proc.wait()}) without printing its URL")
