"""The autoscaling signals: `qinfer queues` and its Prometheus exporter read the numbers
the streams hold (no worker runs: scale from zero)."""
import subprocess
import sys
import time
import urllib.request

from qinfer.client import Client
from qinfer.embedded_redis import free_port
from qinfer.queue.keys import Keys
from qinfer.queue.stats import model_stats
from tests.fixtures_redis import queued_entries, wait_until


def _gauges(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith("qinfer:queue") and 'model_name="auto"' in line}


def test_exporter_and_table_read_the_streams(test_settings, redis_url):
    client = Client(settings=test_settings)
    client.submit_many([{"model": "auto", "prompt": f"job {i}", "priority": i % 3,
                         "sampling": {"max_tokens": 10}} for i in range(7)])
    time.sleep(0.3)
    stats = model_stats(client.redis, Keys(), "auto", test_settings.max_priority)
    assert (stats["queued"], stats["pending"]) == (queued_entries(client.redis, "auto"), 0) == (7, 0)
    assert 0.3 <= stats["oldest_queued_age_s"] < 30
    assert stats["queued_tokens_estimate"] == stats["admitted_tokens"] > 7 * 10

    table = subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", redis_url, "queues"],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    header, row = table[0].split(), next(line.split() for line in table[1:] if line.startswith("auto"))
    assert dict(zip(header, row))["queued"] == "7"

    port = free_port()
    exporter = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "--redis", redis_url, "queues",
                                 "--metrics-port", str(port), "--interval", "0.2"], stdout=subprocess.DEVNULL)
    try:
        gauges = wait_until(lambda: _try(_gauges, port), timeout=30)
        assert gauges['qinfer:queue_waiting{model_name="auto"}'] == 7
        assert gauges['qinfer:queue_pending{model_name="auto"}'] == 0
        assert gauges['qinfer:queue_oldest_age_seconds{model_name="auto"}'] > 0
        assert gauges['qinfer:queue_tokens_estimate{model_name="auto"}'] == stats["queued_tokens_estimate"]
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)


def _try(read, port):
    try:
        return read(port) or None
    except OSError:
        return None
