"""QINFER_SUBMIT_WAIT_AOF: submit returns only once Redis has fsynced the job (WAITAOF, Redis >= 7.2),
and refuses, before writing anything, a server that cannot confirm it."""
import os
import re
import subprocess

import pytest

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import redis_server_binary
from qinfer.errors import DurabilityError
from qinfer.schema import JobStatus
from tests.fixtures_redis import RestartableRedis


def server_version(binary: str) -> tuple[int, int]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
    return tuple(int(x) for x in re.search(r"v=(\d+)\.(\d+)", out).groups())


def waitaof_server() -> str:
    """A server binary with WAITAOF: QINFER_TEST_WAITAOF_SERVER, or the local one if >= 7.2."""
    for binary in (os.environ.get("QINFER_TEST_WAITAOF_SERVER"), redis_server_binary()):
        if binary and server_version(binary) >= (7, 2):
            return binary
    pytest.skip("no Redis >= 7.2 here (set QINFER_TEST_WAITAOF_SERVER to a redis-server/valkey-server binary)")


def durable_client(server: RestartableRedis, **settings) -> Client:
    return Client(settings=Settings(redis_url=server.url, require_live_model=False, submit_wait_aof=True,
                                    **settings))


def test_a_server_without_waitaof_is_refused_before_anything_is_written(tmp_path):
    binary = redis_server_binary()
    if server_version(binary) >= (7, 2):
        pytest.skip(f"{binary} has WAITAOF")
    server = RestartableRedis(tmp_path).start()
    try:
        client = durable_client(server)
        for submit in (lambda: client.submit(model="m", prompt="x"),
                       lambda: client.submit_many([{"model": "m", "prompt": "y"}])):
            with pytest.raises(DurabilityError, match=r"needs Redis >= 7.2 \(WAITAOF\); this server is 7\.") as e:
                submit()
            assert e.value.job_ids == ()
        assert client.redis.keys("*") == []
    finally:
        server.stop()


def test_submit_waits_for_the_fsync_and_says_when_it_did_not_come(tmp_path):
    server = RestartableRedis(tmp_path, binary=waitaof_server()).start()
    try:
        job_id = durable_client(server).submit(model="m", prompt="kept")
        ids = durable_client(server).submit_many([{"model": "m", "prompt": f"p{i}"} for i in range(3)])
        server.kill()
        server.start()              # from the AOF alone
        client = durable_client(server)
        assert [client.get(i).status for i in (job_id, *ids)] == [JobStatus.QUEUED] * 4
        unconfirmed = durable_client(server, submit_wait_aof_replicas=1, redis_timeout_s=0.3)   # no replica
        with pytest.raises(DurabilityError, match="replicas: 0 of 1") as e:
            unconfirmed.submit(model="m", prompt="only local")
        (written,) = e.value.job_ids
        assert client.get(written).status is JobStatus.QUEUED     # written, just not confirmed
    finally:
        server.stop()


def test_a_server_without_an_append_only_file_is_refused(tmp_path):
    server = RestartableRedis(tmp_path, binary=waitaof_server(), appendonly="no").start()
    try:
        client = durable_client(server)
        with pytest.raises(DurabilityError, match="appendonly yes"):
            client.submit(model="m", prompt="x")
        assert client.redis.keys("*") == []
    finally:
        server.stop()
