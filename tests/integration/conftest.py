"""Fixtures shared by the webhook-callback integration tests (test_callbacks_celery.py,
test_callbacks_outbox.py); the HTTP `receiver` fixture lives in tests/callbacks_support.py."""
from __future__ import annotations

import pytest
import redis


@pytest.fixture
def client(redis_url):
    """Redis client on the test's private, emptied Redis; str replies."""
    return redis.Redis.from_url(redis_url, decode_responses=True)

