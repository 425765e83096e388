"""Worker start and stop: jobs that wait for a worker, SIGTERM drain and hand-back."""
import signal
import time
import urllib.request

from qinfer.client import Client
from qinfer.embedded_redis import free_port
from qinfer.schema import JobStatus
from tests.fixtures_redis import queued_entries, wait_until

ARGS = ("--served-model-name", "tiny", "--max-num-seqs", "8")
# 240 tokens (the tiny model's context is 256) at ~1 ms a step on a fast CPU outlast the wait for
# every job to run plus the drain grace (120 tokens and a 0.1 s grace did not: all finished)
LONG = {"temperature": 0, "max_tokens": 240, "ignore_eos": True}


def test_expired_and_cancelled_jobs_never_run_then_sigterm_hands_back(test_settings, start_workers,
                                                                      tiny_llama_dir):
    client = Client(settings=test_settings)
    expired = client.submit(model="tiny", prompt="too late", queue_timeout_s=0.3)
    cancelled = client.submit(model="tiny", prompt="never mind")
    assert client.cancel(cancelled) is JobStatus.CANCELLED
    time.sleep(0.4)
    fleet = start_workers(tiny_llama_dir, 1, env={"QINFER_DRAIN_GRACE_S": "0.05"}, args=ARGS)

    r = client.wait(expired, timeout=30)
    assert r.status is JobStatus.EXPIRED and r.error.code == "queue_timeout" and r.token_ids == []
    wait_until(lambda: queued_entries(client.redis, "tiny") == 0)     # the cancelled entry was skipped
    assert client.get(cancelled).attempts == 0

    long_jobs = client.submit_many([{"model": "tiny", "prompt": f"long {i}", "sampling": LONG} for i in range(8)])
    wait_until(lambda: all(client.get(i).status is JobStatus.RUNNING for i in long_jobs))   # all in flight
    fleet.processes[0].send_signal(signal.SIGTERM)
    assert fleet.processes[0].wait(timeout=30) == 0
    states = [client.get(i) for i in long_jobs]
    assert all(s.status in (JobStatus.QUEUED, JobStatus.SUCCEEDED) for s in states)
    assert any(s.status is JobStatus.QUEUED for s in states)          # in flight, handed back, not lost
    assert all(s.attempts == 0 for s in states if s.status is JobStatus.QUEUED)   # a drain costs no attempt

    port = free_port()
    start_workers(tiny_llama_dir, 1, args=(*ARGS, "--metrics-port", str(port)))
    assert all(client.wait(i, timeout=120).status is JobStatus.SUCCEEDED for i in long_jobs)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'qinfer:request_success_total{model_name="tiny",status="succeeded"}' in metrics
    assert "qinfer:time_to_first_token_seconds_bucket" in metrics and "qinfer:queue_depth" in metrics
