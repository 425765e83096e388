"""Two real worker processes on the tiny model, sharing one fleet for the whole module.

The kill -9 test runs last: it takes a worker down.
"""
import asyncio
import json
import os
import signal
from pathlib import Path

import pytest
import redis

from qinfer.client import AsyncClient, Client
from qinfer.config import Settings
from qinfer.fleet import Fleet
from qinfer.queue.keys import Keys
from qinfer.schema import JobStatus
from tests.fixtures_models import offline_outputs
from tests.fixtures_redis import TEST_ENV, wait_until

REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny"
POISON = "POISON-PILL"
GREEDY = {"temperature": 0, "max_tokens": 12}
PROMPTS = [f"{s} number {i}" for i, s in enumerate(["The quick brown fox", "A small robot", "The river",
                                                     "My old teacher", "Every engine", "The red kettle"] * 5)]


@pytest.fixture(scope="module", params=["sync", "async-scheduling"])
def fleet(request, redis_server, tiny_llama_dir):
    redis.Redis.from_url(redis_server.url).flushall()
    engine_mode = ("--async-scheduling",) if request.param == "async-scheduling" else ()
    env = {**TEST_ENV, "QINFER_MAX_ATTEMPTS": "3", "PYTHONPATH": str(REPO)}
    # tests.poison_worker: the normal worker, its engine crashing while a POISON prompt is in it
    fleet = Fleet(tiny_llama_dir, redis_server.url, 2, env=env, worker_module="tests.poison_worker",
                  worker_args=("--poison-marker", POISON, "--served-model-name", MODEL, "--num-kv-blocks", "256",
                               "--max-num-seqs", "8", *engine_mode))
    fleet.start().wait_ready()
    yield fleet
    assert all(code in (0, -9) for code in fleet.stop(timeout=30))


@pytest.fixture(scope="module")
def client(fleet):
    return Client(settings=Settings(redis_url=fleet.redis_url, max_attempts=3))


@pytest.fixture(scope="module")
def offline(tiny_llama_dir):
    return offline_outputs(tiny_llama_dir, PROMPTS, GREEDY)


def _jobs(prompts, **extra):
    return [{"model": MODEL, "prompt": p, "sampling": GREEDY, **extra} for p in prompts]


def test_many_jobs_across_two_workers_equal_offline_generate(client, offline):
    ids = client.submit_many(_jobs(PROMPTS))
    results = [client.wait(i, timeout=120) for i in ids]
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    assert [(r.text, r.token_ids) for r in results] == [offline[p] for p in PROMPTS]
    assert len({r.worker for r in results}) == 2                 # both workers served
    assert all(r.usage.completion_tokens == 12 and r.timings.finished_at for r in results)


def test_chat_messages_and_callback_outbox(client):
    job_id = client.submit(model=MODEL, messages=[{"role": "user", "content": "Hello"}], sampling=GREEDY,
                           callback_url="https://example.com/hook", metadata={"order": 7})
    r = client.wait(job_id, timeout=30)
    assert r.status is JobStatus.SUCCEEDED and r.usage.prompt_tokens > 2 and r.metadata == {"order": 7}
    outbox = client.redis.xrange(Keys().callback_outbox(job_id))
    assert [e for _, e in outbox if job_id.encode() in e.values()]    # enqueued in the terminal MULTI/EXEC


def test_logprobs_and_prompt_logprobs_in_the_job_result_equal_offline_generate(client, tiny_llama_dir):
    from qinfer import LLM, SamplingParams

    sampling = {"temperature": 0, "max_tokens": 5, "logprobs": 2, "prompt_logprobs": 1}
    r = client.wait(client.submit(model=MODEL, prompt=PROMPTS[0], sampling=sampling), timeout=60)
    [out] = LLM(str(tiny_llama_dir), num_kv_blocks=64).generate(PROMPTS[0], SamplingParams(**sampling),
                                                                 use_tqdm=False)
    assert r.token_ids == out.outputs[0].token_ids and r.logprobs == r.outputs[0].logprobs
    assert r.prompt_logprobs[0] is None and out.prompt_logprobs[0] is None
    got_positions = r.logprobs + r.prompt_logprobs[1:]
    expected_positions = out.outputs[0].logprobs + out.prompt_logprobs[1:]
    assert len(got_positions) == len(expected_positions) == 5 + len(out.prompt_token_ids) - 1
    for got, expected in zip(got_positions, expected_positions):   # JSON keys: token ids as strings
        assert list(got) == [str(t) for t in expected]
        for token_id, entry in expected.items():
            assert got[str(token_id)].rank == entry.rank and got[str(token_id)].decoded_token == entry.decoded_token
            assert got[str(token_id)].logprob == pytest.approx(entry.logprob, abs=1e-5)


def test_streaming_deltas_concatenate_to_final_text(client):
    job_id = client.submit(model=MODEL, prompt="The night train", stream=True,
                           sampling={"temperature": 0, "max_tokens": 40, "ignore_eos": True})
    deltas = list(client.stream(job_id, timeout=30))
    final = client.wait(job_id, timeout=30)
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == final.text
    assert [t for d in deltas for t in d.token_ids] == final.token_ids


def test_async_client_submit_stream_wait(client):
    async def run():
        aclient = AsyncClient(settings=client.settings)
        try:
            job_id = await aclient.submit(model=MODEL, prompt="A curious cat", stream=True,
                                          sampling={"temperature": 0, "max_tokens": 30, "ignore_eos": True})
            deltas = [d async for d in aclient.stream(job_id, timeout=30)]
            return deltas, await aclient.wait(job_id, timeout=30), (await aclient.get(job_id)).status
        finally:
            await aclient.aclose()

    deltas, final, status = asyncio.run(run())
    assert status == JobStatus.SUCCEEDED and len(deltas) > 1
    assert "".join(d.text for d in deltas) == final.text
    assert [t for d in deltas for t in d.token_ids] == final.token_ids == client.wait(final.id).token_ids


def test_cancel_running_job_keeps_partial_output(client):
    job_id = client.submit(model=MODEL, prompt="The tired scheduler", stream=True,
                           sampling={"temperature": 0, "max_tokens": 240, "ignore_eos": True})
    next(iter(client.stream(job_id, timeout=30)))                # it is running
    assert client.cancel(job_id) is JobStatus.RUNNING
    r = client.wait(job_id, timeout=30)
    assert r.status is JobStatus.CANCELLED
    assert 0 < len(r.token_ids) < 240 and r.finish_reason == "abort"


def test_run_timeout_stops_with_partial_output(client):
    # 0.1 s: under the 240 tokens' time on a fast CPU (~1 ms a step: 0.3 s let the job finish)
    job_id = client.submit(model=MODEL, prompt="Our garden", run_timeout_s=0.1,
                           sampling={"temperature": 0, "max_tokens": 240, "ignore_eos": True})
    r = client.wait(job_id, timeout=30)
    assert r.status is JobStatus.FAILED and r.error.code == "run_timeout"
    assert 0 < len(r.token_ids) < 240 and r.finish_reason == "timeout"


def test_high_priority_overtakes_low_in_a_loaded_queue(client):
    low = client.submit_many(_jobs([f"low {i}" for i in range(40)], priority=0))
    high = client.submit_many(_jobs([f"high {i}" for i in range(4)], priority=5))
    finished = lambda ids: sorted(client.wait(i, timeout=120).timings.finished_at for i in ids)
    high_done, low_done = finished(high), finished(low)
    assert high_done[-1] < low_done[-10]          # the highs did not wait behind the 40 lows


def test_bad_input_fails_that_job_and_workers_survive(client, fleet):
    r = client.redis
    too_long = client.submit(model=MODEL, prompt_token_ids=[5] * 5000)
    bad_ids = client.submit(model=MODEL, prompt_token_ids=[10**6])
    stream = Keys().queue(MODEL, 0)
    r.xadd(stream, {"id": "raw-garbage", "payload": "{not json"})
    r.xadd(stream, {"id": "raw-sampling", "payload": json.dumps(
        {"model": MODEL, "prompt": "x", "sampling": {"temperature": -3}})})
    r.xadd(stream, {"id": "raw-model", "payload": json.dumps({"model": "other", "prompt": "x"})})
    r.xadd(stream, {"junk": "no id at all"})
    good = client.submit(model=MODEL, prompt="still fine", sampling=GREEDY)
    expect = {too_long: "invalid_request", bad_ids: "invalid_request", "raw-garbage": "malformed_payload",
              "raw-sampling": "invalid_request", "raw-model": "unknown_model"}
    for job_id, code in expect.items():
        wait_until(lambda: r.exists(Keys().job(job_id)))      # raw entries have no job hash until then
        res = client.wait(job_id, timeout=30)
        assert res.status is JobStatus.FAILED and res.error.code == code, res
        assert res.error.message
    assert "not valid JSON" in client.get("raw-garbage").error.message
    assert "max_model_len" in client.get(too_long).error.message or "KV cache" in client.get(too_long).error.message
    assert client.wait(good, timeout=30).status is JobStatus.SUCCEEDED
    wait_until(lambda: any(b"no job id" in e[1][b"reason"] for e in r.xrange(Keys().dead_letters(MODEL))))
    assert all(p.poll() is None for p in fleet.processes)


def test_poison_job_dead_lettered_others_unaffected(client, fleet):
    ids = client.submit_many(_jobs([f"neighbour {i}" for i in range(12)]))
    poison = client.submit(model=MODEL, prompt=f"{POISON} please crash", sampling=GREEDY)
    ids += client.submit_many(_jobs([f"late neighbour {i}" for i in range(4)]))
    assert all(client.wait(i, timeout=120).status is JobStatus.SUCCEEDED for i in ids)
    r = client.wait(poison, timeout=120)
    assert r.status is JobStatus.FAILED and r.error.code == "dead_letter"
    assert "after 3 attempts" in r.error.message and "poison job" in r.error.message
    dead = [e for _, e in client.redis.xrange(Keys().dead_letters(MODEL)) if e[b"id"] == poison.encode()]
    assert len(dead) == 1 and int(dead[0][b"attempts"]) == 4
    assert all(p.poll() is None for p in fleet.processes)


def test_stalled_worker_loses_its_lease_and_never_double_returns(client, fleet, offline):
    ids = client.submit_many(_jobs(PROMPTS))
    stalled = fleet.processes[1]
    wait_until(lambda: any(client.get(i).status is JobStatus.RUNNING and client.get(i).worker.endswith("-1")
                           for i in ids), timeout=30, interval=0.005)
    os.kill(stalled.pid, signal.SIGSTOP)          # a hung worker: its leases run out, worker 0 reclaims
    try:
        wait_until(lambda: any(client.get(i).attempts > 1 for i in ids), timeout=30)
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    results = [client.wait(i, timeout=120) for i in ids]
    assert [(r.status, r.text, r.token_ids) for r in results] == \
        [(JobStatus.SUCCEEDED, *offline[p]) for p in PROMPTS]
    assert all(client.redis.llen(Keys().job_done(i)) == 1 for i in ids)
    assert stalled.poll() is None


def test_kill_9_worker_with_jobs_in_flight_nothing_lost(client, fleet, offline):
    victim = fleet.processes[0]
    ids = client.submit_many(_jobs(PROMPTS + PROMPTS, sampling={**GREEDY, "max_tokens": 12}))

    def victim_holds_jobs():
        return [i for i in ids if client.get(i).status is JobStatus.RUNNING
                and client.get(i).worker.endswith("-0")]
    def victim_stopped_holding_jobs():
        """SIGSTOP pins the victim while Redis shows it running jobs (else they may finish before the kill)."""
        if not victim_holds_jobs():
            return None
        os.kill(victim.pid, signal.SIGSTOP)
        held = victim_holds_jobs()
        if not held:
            os.kill(victim.pid, signal.SIGCONT)
        return held
    held = wait_until(victim_stopped_holding_jobs, timeout=30, interval=0.005)
    os.kill(victim.pid, signal.SIGKILL)
    results = [client.wait(i, timeout=120) for i in ids]
    assert all(r.status is JobStatus.SUCCEEDED for r in results)
    assert [(r.text, r.token_ids) for r in results] == [offline[p] for p in PROMPTS + PROMPTS]
    retried = [r for r in results if r.attempts > 1]
    assert retried and all(not r.worker.endswith("-0") for r in retried)
    assert {r.id for r in retried} >= {i for i in held if client.get(i).attempts > 1}
    assert all(client.redis.llen(Keys().job_done(i)) == 1 for i in ids)     # one result each
