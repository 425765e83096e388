"""Prefix-affinity lanes: the affinity text, and lane ownership by rendezvous hashing."""
from qinfer.queue.keys import NUM_LANES, Keys
from qinfer.queue.lanes import affinity_text, job_lane, own_lanes, pull_order
from qinfer.schema import JobRequest

WORKERS = ["w-a", "w-b", "w-c"]


def owners(workers, model="m"):
    return {lane: w for w in workers for lane in own_lanes(w, workers, model)}


def test_every_lane_has_exactly_one_owner():
    by_worker = [own_lanes(w, WORKERS, "m") for w in WORKERS]
    assert sorted(lane for lanes in by_worker for lane in lanes) == list(range(NUM_LANES))


def test_a_joining_worker_takes_lanes_only_for_itself():
    before, after = owners(WORKERS), owners(WORKERS + ["w-d"])
    moved = {lane for lane in range(NUM_LANES) if before[lane] != after[lane]}
    assert all(after[lane] == "w-d" for lane in moved)


def test_a_leaving_worker_hands_over_only_its_own_lanes():
    before, after = owners(WORKERS), owners(WORKERS[1:])
    assert all(after[lane] == before[lane] for lane in range(NUM_LANES) if before[lane] != "w-a")
    assert set(after.values()) <= set(WORKERS[1:])


def test_a_worker_alone_owns_every_lane_and_ownership_is_per_model():
    assert own_lanes("w-a", [], "m") == set(range(NUM_LANES))
    assert owners(WORKERS, "m") != owners(WORKERS, "other-model")      # models spread their owners apart


def test_shared_prefixes_share_a_lane():
    system = "You are a terse assistant for a bicycle shop. " * 5
    chat = [JobRequest(model="m", messages=[{"role": "system", "content": system},
                                            {"role": "user", "content": f"question {i}"}]) for i in range(5)]
    plain = [JobRequest(model="m", prompt=system + f"question {i}") for i in range(5)]
    assert len({job_lane(r, f"id{i}", affinity=True, prefix_chars=128) for i, r in enumerate(chat)}) == 1
    assert len({job_lane(r, f"id{i}", affinity=True, prefix_chars=128) for i, r in enumerate(plain)}) == 1
    keyed = JobRequest(model="m", prompt="x", affinity_key="tenant-7")
    assert affinity_text(keyed, 128) == "tenant-7"


def test_routing_off_spreads_one_prefix_over_lanes_by_job_id():
    req = JobRequest(model="m", prompt="same prefix")
    assert len({job_lane(req, f"job{i}", affinity=False, prefix_chars=128) for i in range(64)}) == NUM_LANES


def test_pull_order_is_priority_first_own_lanes_first():
    keys = Keys()
    order = pull_order(keys, "m", 1, {3, 5})
    assert order[:3] == [keys.queue("m", 1, 3), keys.queue("m", 1, 5), keys.queue("m", 1, 0)]
    assert order[NUM_LANES:NUM_LANES + 2] == [keys.queue("m", 0, 3), keys.queue("m", 0, 5)]
    assert sorted(order) == sorted(keys.queues("m", 1))
    assert pull_order(keys, "m", 1, {3}, only_own=True) == [keys.queue("m", 1, 3), keys.queue("m", 0, 3)]
