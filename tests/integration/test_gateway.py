"""The gateway as a real process (uvicorn), two real workers on the tiny model, a real Redis,
and the official `openai` client: interactive endpoints, their errors, and the Batch API."""
import http.client
import json
import socket
import time
import urllib.request
from collections import Counter

import openai
import pytest
import redis

from qinfer.callbacks import verify
from qinfer.client import Client
from qinfer.config import Settings
from qinfer.fleet import Fleet
from qinfer.schema import JobStatus
from tests.callbacks_support import SECRET, CallbacksWorker, Receiver
from tests.fixtures_redis import TEST_ENV, wait_until
from tests.integration.gateway_support import (MODEL, REPO, GatewayProcess, batch_file, chat_line, job_requests,
                                               jsonl, paused, wait_batch)

KEY, OTHER_KEY = "sk-alice-0123", "sk-bob-4567"
MAX_QUEUED_TOKENS = 20_000
GREEDY = {"temperature": 0, "max_tokens": 10}
LONG = {"temperature": 0, "max_tokens": 200, "ignore_eos": True}
PROMPTS = ["The quick brown fox", "A small robot", "The river", "My old teacher", "Every engine",
           "The red kettle", "A curious cat", "The night train"]


@pytest.fixture(scope="module")
def fleet(redis_server, tiny_llama_dir, tmp_path_factory):
    redis.Redis.from_url(redis_server.url).flushall()
    fleet = Fleet(tiny_llama_dir, redis_server.url, 2, env={**TEST_ENV, "PYTHONPATH": str(REPO)},
                  worker_args=("--served-model-name", MODEL, "--num-kv-blocks", "256", "--max-num-seqs", "8"))
    callbacks = CallbacksWorker(redis_server.url, tmp_path_factory.mktemp("cb") / "callbacks.log").start()
    fleet.start().wait_ready()
    yield fleet
    callbacks.stop()
    fleet.stop(timeout=30)


@pytest.fixture(scope="module")
def gateway(fleet, tmp_path_factory):
    env = {"QINFER_API_KEYS": f"alice:{KEY},bob:{OTHER_KEY}", "QINFER_MAX_QUEUED_TOKENS": str(MAX_QUEUED_TOKENS),
           "QINFER_CALLBACK_ALLOW": "127.0.0.1"}
    gateway = GatewayProcess(fleet.redis_url, tmp_path_factory.mktemp("files"), env).start()
    yield gateway
    assert gateway.stop() in (0, -15)      # uvicorn re-raises SIGTERM after its graceful shutdown


@pytest.fixture(scope="module")
def client(gateway):
    return gateway.openai(KEY)


@pytest.fixture(scope="module")
def jobs(fleet):
    return Client(settings=Settings(redis_url=fleet.redis_url))


@pytest.fixture(scope="module")
def offline(tiny_llama_dir):
    """Greedy answers of the engine in this process to one-user-message chats, rendered by
    transformers' tokenizer with the model's own chat template: text by content."""
    from qinfer import LLM, SamplingParams

    llm = LLM(str(tiny_llama_dir), num_kv_blocks=256)
    tokenizer = llm.get_tokenizer()
    ids = [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                              return_dict=True)["input_ids"]) for p in PROMPTS]
    outs = llm.generate(ids, SamplingParams(**GREEDY), use_tqdm=False)
    return {p: o.outputs[0].text for p, o in zip(PROMPTS, outs)}


def _chat(client, content, **sampling):
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": content}],
                                          **{**GREEDY, **sampling})


# --- interactive ----------------------------------------------------------------------------
def test_models_list_names_the_served_model(client):
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).owned_by == "qinfer"


def test_chat_completion_equals_the_engine_on_the_chat_template(client, offline):
    for prompt in PROMPTS[:3]:
        answer = _chat(client, prompt)
        assert answer.object == "chat.completion" and answer.model == MODEL
        assert answer.choices[0].message.content == offline[prompt]
        assert answer.choices[0].finish_reason in ("stop", "length")
        usage = answer.usage
        assert usage.completion_tokens <= 10 and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_adds_up_to_the_answer_and_ends_with_done(client, gateway, offline):
    chunks = list(_chat(client, PROMPTS[3], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == offline[PROMPTS[3]] and len(chunks) > 3
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")
    assert chunks[-1].usage.completion_tokens == _chat(client, PROMPTS[3]).usage.completion_tokens
    raw = _raw_stream(gateway, {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
                                "max_tokens": 4, "temperature": 0})
    assert raw.strip().endswith("data: [DONE]")


def test_n_completions_and_seeded_sampling_reproduce(client):
    a = _chat(client, "Our garden", n=3, temperature=1.0, seed=7, max_tokens=12)
    b = _chat(client, "Our garden", n=3, temperature=1.0, seed=7, max_tokens=12)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1


def test_completion_with_logprobs_matches_its_text(client):
    answer = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8, temperature=0,
                                       logprobs=2)
    choice = answer.choices[0]
    assert answer.object == "text_completion"
    lp = choice.logprobs
    assert len(lp.tokens) == answer.usage.completion_tokens == len(lp.token_logprobs)
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert len(top) == 2 and max(top.values()) == pytest.approx(logprob)   # greedy takes the top token
    streamed = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8, temperature=0,
                                         stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == choice.text


def test_chat_logprobs_in_openai_shape(client):
    answer = _chat(client, PROMPTS[0], logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert len(content) == answer.usage.completion_tokens
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)


def refused_while_queue_is_full(client, jobs) -> openai.RateLimitError:
    """Long jobs submitted straight to the queue hold about 5,000 of its 20,000 admitted tokens
    while they run: a request for 16,000 more (within the bound alone) is refused."""
    fillers = jobs.submit_many([{"model": MODEL, "prompt": f"Filler {i}", "sampling": LONG} for i in range(24)])
    try:
        with pytest.raises(openai.RateLimitError, match="QINFER_MAX_QUEUED_TOKENS") as refused:
            _chat(client, "x", max_tokens=16_000)
    finally:
        for job_id in fillers:
            jobs.cancel(job_id)
    return refused.value


def test_errors_in_openai_shape(client, gateway, jobs):
    with pytest.raises(openai.NotFoundError, match="no live worker"):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.AuthenticationError):
        gateway.openai("sk-wrong").models.list()
    assert refused_while_queue_is_full(client, jobs).body["code"] == "queue_full"
    with pytest.raises(openai.BadRequestError, match="temperature") as bad:
        _chat(client, "x", temperature=5)
    assert bad.value.body["param"] == "temperature" and bad.value.body["type"] == "invalid_request_error"
    with pytest.raises(openai.BadRequestError, match="tools is not supported"):
        _chat(client, "x", tools=[{"type": "function", "function": {"name": "f"}}])


def test_jobs_carry_the_key_name_and_extra_fields(client, jobs):
    answer = _chat(client, "A small robot", metadata={"order": "7"}, extra_body={"priority": 8})
    job = jobs.get(answer.id.removeprefix("chatcmpl-"))
    assert job.metadata == {"order": "7", "api_key_name": "alice"}
    assert json.loads(jobs.redis.hget(jobs.keys.job(job.id), "request"))["priority"] == 8


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "wait"])
def test_a_client_that_disconnects_cancels_its_job(gateway, jobs, fleet, stream):
    probe = f"disconnect-{stream}-{time.time()}"
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "The tired scheduler"}], "stream": stream,
            "temperature": 0, "max_tokens": 240, "ignore_eos": True, "metadata": {"probe": probe}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    job_id = wait_until(lambda: _job_with_probe(jobs, probe), timeout=30)
    wait_until(lambda: jobs.get(job_id).status is JobStatus.RUNNING, timeout=30)
    if stream:
        conn.getresponse().readline()              # the first event has come
    with paused(fleet):                            # the job cannot finish before the gateway sees the client go
        conn.sock.shutdown(socket.SHUT_RDWR)       # the client goes away before the answer
        conn.close()
        wait_until(lambda: jobs.redis.exists(jobs.keys.job_cancel(job_id)), timeout=30)   # the gateway cancelled
    result = jobs.wait(job_id, timeout=30)
    assert result.status is JobStatus.CANCELLED and len(result.token_ids) < 240


def _job_with_probe(jobs, probe: str):
    for key, request in job_requests(jobs.redis):
        if probe in request:
            return key.rsplit(":", 1)[1]
    return None


def test_metrics_count_requests_by_route(client, gateway):
    client.models.list()
    with urllib.request.urlopen(f"{gateway.url}/metrics") as reply:
        text = reply.read().decode()
    assert 'qinfer:gateway_requests_total{route="/v1/models",status="200"}' in text


# --- Batch API ------------------------------------------------------------------------------
def _run_batch(client, lines, **create):
    uploaded = client.files.create(file=("requests.jsonl", batch_file(lines)), purpose="batch")
    assert client.files.retrieve(uploaded.id).bytes == len(batch_file(lines))
    return client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                 completion_window="24h", **create)


def _answers(client, batch) -> tuple[dict, dict]:
    """custom_id -> line, of the output file and of the error file; each custom_id once."""
    files = [jsonl(client.files.content(f).text) if f else [] for f in (batch.output_file_id, batch.error_file_id)]
    ids = Counter(line["custom_id"] for lines in files for line in lines)
    assert all(n == 1 for n in ids.values()), ids
    return tuple({line["custom_id"]: line for line in lines} for lines in files)


def test_batch_answers_every_line_once_as_the_direct_request(client):
    lines = [chat_line(f"req-{i}", p, **GREEDY) for i, p in enumerate(PROMPTS)]
    batch = _run_batch(client, lines, metadata={"run": "nightly"})
    assert batch.status == "validating" and batch.metadata == {"run": "nightly"}
    seen_counts = []
    while batch.status not in ("completed", "failed"):
        batch = client.batches.retrieve(batch.id)
        seen_counts.append(batch.request_counts.completed)
        time.sleep(0.05)
    assert batch.status == "completed", batch.errors
    assert seen_counts == sorted(seen_counts)                       # counts only grow
    assert batch.request_counts.model_dump() == {"total": 8, "completed": 8, "failed": 0}
    assert batch.error_file_id is None and batch.completed_at >= batch.in_progress_at
    output, _ = _answers(client, batch)
    assert set(output) == {line["custom_id"] for line in lines}
    for line in lines:
        answer = output[line["custom_id"]]
        assert answer["response"]["status_code"] == 200 and answer["error"] is None
        direct = _chat(client, line["body"]["messages"][0]["content"]).model_dump()
        body = answer["response"]["body"]
        assert body["choices"] == [{k: c[k] for k in ("index", "logprobs", "finish_reason")} |
                                   {"message": {"role": "assistant", "content": c["message"]["content"]}}
                                   for c in direct["choices"]]
        assert body["usage"] == {k: direct["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert batch.id in [b.id for b in client.batches.list(limit=5)]


def test_batch_with_bad_lines_fails_validation_with_per_line_errors(client):
    good = chat_line("ok", "Hello", **GREEDY)
    raw = (batch_file([good]) + b"{not json\n" + batch_file([
        chat_line("ok", "again"),                                          # duplicate custom_id
        {**chat_line("m", "x"), "method": "GET"},
        {**chat_line("u", "x"), "url": "/v1/completions"},
        chat_line("model", "x") | {"body": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}},
        chat_line("temp", "x", temperature=9),
    ]))
    uploaded = client.files.create(file=("bad.jsonl", raw), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                  completion_window="24h")
    batch = wait_batch(client, batch.id, ("failed", "completed", "in_progress"))
    assert batch.status == "failed" and batch.failed_at
    assert [(e.line, e.code) for e in batch.errors.data] == [
        (2, "invalid_json"), (3, "duplicate_custom_id"), (4, "invalid_method"), (5, "mismatched_url"),
        (6, "model_not_found"), (7, "invalid_request")]
    assert batch.errors.data[-1].param == "body.temperature"


def test_batch_cancelled_mid_run_answers_each_line_once(client):
    lines = [chat_line(f"long-{i}", PROMPTS[i % 8], **LONG) for i in range(24)]
    batch = _run_batch(client, lines)
    wait_batch(client, batch.id, ("in_progress",))
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    batch = wait_batch(client, batch.id, ("cancelled",))
    output, errors = _answers(client, batch)
    assert set(output) | set(errors) == {line["custom_id"] for line in lines}
    assert errors and all(e["error"]["code"] == "batch_cancelled" and e["response"] is None for e in errors.values())
    assert batch.request_counts.model_dump() == {"total": 24, "completed": len(output), "failed": len(errors)}
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(_run_and_finish(client))


def _run_and_finish(client) -> str:
    batch = _run_batch(client, [chat_line("one", "Hello", **GREEDY)])
    return wait_batch(client, batch.id, ("completed",)).id


def test_batch_webhook_is_signed_and_names_the_event(client):
    receiver = Receiver()
    try:
        batch = _run_batch(client, [chat_line("w", "Hello", **GREEDY)],
                           extra_body={"callback_url": receiver.url("/batch-done")})
        wait_batch(client, batch.id, ("completed",))
        [delivery] = wait_until(lambda: receiver.requests("/batch-done"), timeout=30)
        event = verify(SECRET, delivery.headers, delivery.body)
        assert event["type"] == "batch.completed" and event["data"]["id"] == batch.id
        assert event["data"]["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
        assert delivery.headers["webhook-id"] == f"msg_{batch.id}_batch.completed"
    finally:
        receiver.close()


def test_files_and_batches_belong_to_their_key(client, gateway):
    batch_id = _run_and_finish(client)
    batch = client.batches.retrieve(batch_id)
    other = gateway.openai(OTHER_KEY)
    for call in (lambda: other.batches.retrieve(batch_id), lambda: other.files.content(batch.output_file_id),
                 lambda: other.files.delete(batch.input_file_id)):
        with pytest.raises(openai.NotFoundError):
            call()
    assert batch.output_file_id not in [f.id for f in other.files.list()]
    assert client.files.delete(batch.input_file_id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(batch.input_file_id)


def _raw_stream(gateway, body: dict) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps(body),
                 {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def test_batches_list_pages_newest_first(client, gateway):
    made = [_run_batch(client, [chat_line("p", "Hello", **GREEDY)]).id for _ in range(3)]
    ids = [b.id for b in client.batches.list(limit=2)]            # the client follows `after` page by page
    assert len(ids) == len(set(ids)) and ids[:3] == made[::-1]
    assert [b.id for b in gateway.openai(OTHER_KEY).batches.list()] == []
    for batch_id in made:
        wait_batch(client, batch_id, ("completed",))
