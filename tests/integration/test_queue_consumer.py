"""Worker side of the queue against a real Redis: priority pull, lease, reclaim, hand-back, idempotent results."""
import time

import pytest
import redis

from qinfer.client import Client
from qinfer.queue.consumer import Consumer
from qinfer.queue.keys import NUM_LANES, Keys
from qinfer.queue.lanes import lane_of
from qinfer.queue.writer import Final, ResultWriter
from qinfer.schema import JobStatus
from tests.fixtures_redis import queued_entries


@pytest.fixture
def r(redis_url):
    return redis.Redis.from_url(redis_url)


def _consumer(r, settings, name):
    c = Consumer(r, Keys(), "m", name, settings)
    c.ensure_groups()
    return c


def test_pull_takes_highest_priority_first_and_at_most_n(r, test_settings):
    client = Client(settings=test_settings)
    low = client.submit_many([{"model": "m", "prompt": "low", "priority": 0}] * 3)
    high = client.submit_many([{"model": "m", "prompt": "high", "priority": 7}] * 2)
    got = _consumer(r, test_settings, "a").pull(3)
    assert [d.job_id for d in got] == high + low[:1]
    assert all(d.attempts == 1 and d.status == "queued" for d in got)
    assert client.get(high[0]).status is JobStatus.RUNNING


def test_a_job_in_another_workers_lane_waits_the_steal_delay_for_its_owner(r, test_settings):
    settings = test_settings.model_copy(update={"affinity_steal_after_s": 0.4})
    client = Client(settings=settings)
    lane = lane_of("tenant")
    owner, other, laneless = (_consumer(r, settings, name) for name in ("owner", "other", "laneless"))
    owner.set_own_lanes({lane})
    other.set_own_lanes(set(range(NUM_LANES)) - {lane})
    laneless.set_own_lanes(set())

    def submit(*prompts):
        return [client.submit(model="m", prompt=p, affinity_key="tenant") for p in prompts]

    [single] = submit("a")
    assert other.pull(5) == [] and other.wait_for_entries(0.05) == []    # young, alone: left to its owner
    assert laneless.wait_for_entries(0.05) == []
    assert [d.job_id for d in owner.pull(5)] == [single]                 # the owner takes it at once
    first, second = submit("b", "c")
    assert [d.job_id for d in other.pull(5)] == [first]                  # a burst: all but the newest
    time.sleep(0.45)
    assert [d.job_id for d in other.pull(5)] == [second]                 # aged: any worker helps
    [third] = submit("d")
    time.sleep(0.45)
    assert [d.job_id for d in laneless.wait_for_entries(1.0)] == [third]


def test_lease_renewal_reclaim_and_lost_lease(r, test_settings):
    settings = test_settings.model_copy(update={"lease_seconds": 0.3})
    job_id = Client(settings=settings).submit(model="m", prompt="x")
    a, b = _consumer(r, settings, "a"), _consumer(r, settings, "b")
    [held] = a.pull(5)
    time.sleep(0.2)
    assert a.renew([held]) == []                 # renewed: not idle past the lease
    time.sleep(0.2)
    assert b.reclaim(5) == []
    time.sleep(0.35)
    [taken] = b.reclaim(5)
    assert taken.job_id == job_id and taken.attempts == 2
    assert a.renew([held]) == [held]             # a learns it lost the job; it does not steal it back
    assert b.renew([taken]) == []


def test_graceful_hand_back_is_reclaimable_now_without_using_an_attempt(r, test_settings):
    job_id = Client(settings=test_settings).submit(model="m", prompt="x")
    a, b = _consumer(r, test_settings, "a"), _consumer(r, test_settings, "b")
    a.hand_back(a.pull(1), graceful=True)
    assert r.hget(Keys().job(job_id), "status") == b"queued"
    [again] = b.reclaim(1)
    assert again.job_id == job_id and again.attempts == 1


def test_result_written_once_second_run_counted_as_duplicate(r, test_settings):
    client = Client(settings=test_settings)
    job_id = client.submit(model="m", prompt="x")
    settings = test_settings.model_copy(update={"lease_seconds": 0.05})
    a, b = _consumer(r, settings, "a"), _consumer(r, settings, "b")
    [da] = a.pull(1)
    time.sleep(0.1)
    [db] = b.reclaim(1)
    assert ResultWriter(r, Keys(), "b", settings).flush([], [Final(db, "succeeded", {"output": "{}"})]) == [True]
    assert ResultWriter(r, Keys(), "a", settings).flush([], [Final(da, "failed", {"output": "{}"})]) == [False]
    result = client.get(job_id)
    assert (result.status, result.worker, result.duplicates) == (JobStatus.SUCCEEDED, "b", 1)
    assert r.llen(Keys().job_done(job_id)) == 1
    assert r.hget(Keys().queued_counts("m"), "jobs") == b"0"      # released once
    assert queued_entries(r, "m") == 0
    assert sum(r.xpending(stream, "workers")["pending"] for stream in Keys().queues("m", 9)) == 0
