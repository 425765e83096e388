"""The outage policy every Redis user of qinfer shares: one log line per outage, capped
exponential backoff with jitter, a clear error past the limit or the caller's deadline."""
import logging
import time

import pytest
import redis

from qinfer.errors import RedisUnavailableError
from qinfer.queue.outage import Outage

DOWN = redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


def test_logs_once_when_an_outage_starts_and_once_when_it_ends(caplog):
    outage = Outage(limit_s=60, who="worker w1")
    with caplog.at_level(logging.INFO, logger="qinfer.queue.outage"):
        for _ in range(50):
            outage.failed(DOWN)
        outage.ended()
        outage.ended()                   # no outage: nothing to say
        outage.failed(DOWN)              # a second outage is a second line
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(": ", 1)[1][:21] for line in lines] == \
        ["Redis is unreachable ", "Redis is back after 0", "Redis is unreachable "]
    assert all(line.startswith("worker w1: ") for line in lines) and "QINFER_REDIS_OUTAGE_LIMIT_S" in lines[0]


def test_backoff_grows_exponentially_to_a_cap_with_jitter():
    ceilings = [min(2.0, 0.05 * 2 ** (n - 1)) for n in range(1, 30)]
    for n, ceiling in enumerate(ceilings, start=1):
        delays = [Outage.backoff(n) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 100                     # jittered, not in lockstep
    assert Outage.backoff(10_000) <= 2.0


def test_past_the_limit_or_the_deadline_it_raises_the_typed_error():
    outage = Outage(limit_s=0.2, who="worker w1")
    first = outage.failed(DOWN)
    assert 0 < first <= 0.05 and not outage.retry_due()
    time.sleep(0.25)
    with pytest.raises(RedisUnavailableError, match=r"past QINFER_REDIS_OUTAGE_LIMIT_S=0.2 .*Connection refused"):
        outage.failed(DOWN)
    waiting = Outage(limit_s=60, who="qinfer client")
    assert waiting.failed(DOWN, deadline=time.monotonic() + 0.01) <= 0.01      # never sleeps past it
    time.sleep(0.02)
    with pytest.raises(RedisUnavailableError, match="until the timeout"):
        waiting.failed(DOWN, deadline=time.monotonic() - 0.001)
