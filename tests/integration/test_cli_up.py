"""`qinfer up` from a clean environment (no Redis URL): submit, get an answer and its signed
webhook from the fleet's own callbacks worker, stop."""
import os
import signal
import subprocess
import sys

from qinfer.callbacks import verify
from qinfer.client import Client
from qinfer.config import Settings
from tests.callbacks_support import Receiver
from tests.fixtures_redis import wait_until


def test_up_without_redis_url_or_model_serves_smollm2(smollm2_dir):
    """No --model: the fleet serves the real model from the per-machine cache (smollm2_dir made it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QINFER_")}
    env.update(QINFER_LEASE_SECONDS="2", QINFER_DRAIN_GRACE_S="2", QINFER_CALLBACK_ALLOW="127.0.0.1")
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
