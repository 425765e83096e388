"""A private three-node Redis Cluster on free ports (redis-server --cluster-enabled yes,
joined with redis-cli --cluster create), for the tests that run the fleet against it."""
from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from qinfer.embedded_redis import free_port, redis_server_binary


def _redis_cli() -> str:
    found = shutil.which("redis-cli") or str(Path(redis_server_binary()).with_name("redis-cli"))
    if not Path(found).exists():
        pytest.skip("no redis-cli to create a Redis Cluster with")
    return found


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is a valid, free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


class LocalCluster:
    def __init__(self, num_nodes: int = 3):
        self.ports = [_cluster_port() for _ in range(num_nodes)]
        self.dir = tempfile.mkdtemp(prefix="qinfer-cluster-")
        self.processes: list[subprocess.Popen] = []

    @property
    def url(self) -> str:            # a plain URL of one node: qinfer detects the cluster
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> "LocalCluster":
        for port in self.ports:
            node_dir = Path(self.dir) / str(port)
            node_dir.mkdir()
            self.processes.append(subprocess.Popen(
                [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda: redis.Redis(port=port).ping())
        subprocess.run([_redis_cli(), "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                        "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
        for port in self.ports:
            self._wait(lambda: redis.Redis(port=port).cluster("info")["cluster_state"] == "ok")
        return self

    @staticmethod
    def _wait(ready, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the local Redis Cluster did not come up")

    def flushall(self) -> None:
        for port in self.ports:
            redis.Redis(port=port).flushall()

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_cluster():
    cluster = LocalCluster().start()
    yield cluster
    cluster.stop()
