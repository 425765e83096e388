"""Fixtures shared by the webhook-callback integration tests (test_callbacks_celery.py,
test_callbacks_outbox.py). A module that defines its own `client` or `receiver` overrides these."""
from __future__ import annotations

import pytest
import redis

from tests.callbacks_support import Receiver


@pytest.fixture
def client(redis_url):
    """Redis client on the test's private, emptied Redis; str replies."""
    return redis.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def receiver():
    """HTTP receiver on loopback that records the webhook POSTs (see tests/callbacks_support.py)."""
    r = Receiver()
    yield r
    r.close()
