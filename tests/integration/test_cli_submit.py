"""`qinfer submit` against a real worker: the id before it blocks, a readable result (or --json),
the job flags, Ctrl-C while waiting, and `--file` for many jobs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.fleet import Fleet
from tests.fixtures_redis import TEST_ENV

MODEL = "tiny"


@pytest.fixture(scope="module")
def fleet_url(redis_server, tiny_llama_dir):
    """One worker for the module (its Redis is not emptied between these tests)."""
    fleet = Fleet(tiny_llama_dir, redis_server.url, 1, env=TEST_ENV,
                  worker_args=("--served-model-name", MODEL, "--num-kv-blocks", "256"))
    fleet.start().wait_ready()
    yield redis_server.url
    fleet.stop(timeout=30)


def job_keys(url: str) -> list:
    client = Client(settings=Settings(redis_url=url))
    return sorted(client.redis.keys(client.keys.job("*")))


def qinfer(url: str, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "qinfer.cli", "--redis", url, *argv], capture_output=True,
                          text=True, input=stdin, timeout=120)


def test_wait_prints_the_id_first_then_a_readable_result(fleet_url):
    r = qinfer(fleet_url, "submit", "--model", MODEL, "The quick brown fox", "--max-tokens", "6",
               "--sampling", '{"ignore_eos": true}', "--wait")
    assert r.returncode == 0, r.stderr
    job_id = r.stderr.split()[1]
    assert r.stderr.startswith(f"job {job_id} submitted; waiting")
    headline, text = r.stdout.split("\n", 1)
    assert headline.startswith(f"job {job_id} succeeded | ") and "6 generated tokens" in headline
    result = Client(settings=Settings(redis_url=fleet_url)).get(job_id)
    assert text == result.text + "\n"
    assert f"worker {result.worker}" in headline


def test_json_prints_the_whole_result_and_flags_reach_the_job(fleet_url, tmp_path):
    chat = tmp_path / "chat.json"
    chat.write_text(json.dumps([{"role": "user", "content": "Hello there"}]))
    r = qinfer(fleet_url, "submit", "--model", MODEL, "--messages", f"@{chat}", "--n", "2", "--seed", "7",
               "--temperature", "1", "--max-tokens", "4", "--metadata", '{"order": 17}', "--timeout", "60",
               "--wait", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "succeeded" and result["metadata"] == {"order": 17}
    assert len(result["outputs"]) == 2 and all(len(c["token_ids"]) <= 4 for c in result["outputs"])
    client = Client(settings=Settings(redis_url=fleet_url))
    request = json.loads(client.redis.hget(client.keys.job(result["id"]), "request"))
    assert request["messages"] == [{"role": "user", "content": "Hello there"}]
    assert request["sampling"]["seed"] == 7 and request["sampling"]["n"] == 2


def test_stream_prints_the_text_then_the_headline(fleet_url):
    r = qinfer(fleet_url, "submit", "--model", MODEL, "A small robot", "--max-tokens", "5", "--stream")
    assert r.returncode == 0, r.stderr
    text, headline = r.stdout.rsplit("\n", 2)[:2]
    job_id = r.stderr.split()[1]
    assert Client(settings=Settings(redis_url=fleet_url)).get(job_id).text == text
    assert headline.startswith(f"job {job_id} succeeded")


def test_ctrl_c_while_waiting_says_how_to_cancel(fleet_url):
    """No worker serves the model: the job stays queued, the wait blocks until Ctrl-C."""
    env = {**os.environ, "QINFER_REQUIRE_LIVE_MODEL": "0"}      # submit ahead of any worker
    proc = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "--redis", fleet_url, "submit", "--model",
                             "nobody", "hello", "--wait"], stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=_sigint_as_at_a_terminal)
    first = proc.stderr.readline()
    job_id = first.split()[1]
    assert first.startswith(f"job {job_id} submitted")
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 130 and "Traceback" not in err
    assert f"qinfer cancel {job_id}" in err and f"qinfer wait {job_id}" in err
    assert Client(settings=Settings(redis_url=fleet_url)).get(job_id).status.value == "queued"


def _sigint_as_at_a_terminal() -> None:
    """A shell's background job starts with SIGINT ignored, and Python then never turns it into
    KeyboardInterrupt: the child gets the default a terminal's foreground command has."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_wait_timeout_is_one_line(fleet_url, monkeypatch):
    monkeypatch.setenv("QINFER_REQUIRE_LIVE_MODEL", "0")         # submit ahead of any worker
    job_id = Client(settings=Settings(redis_url=fleet_url)).submit(model="nobody", prompt="x")
    r = qinfer(fleet_url, "wait", job_id, "--timeout", "0.5")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"still queued after 0.5s; it goes on: `qinfer wait {job_id}`" in r.stderr


def test_submit_file_submits_every_line_in_order(fleet_url, tmp_path):
    lines = [{"prompt": f"job number {i}", "sampling": {"max_tokens": 3}, "metadata": {"i": i}} for i in range(7)]
    lines.insert(3, {})          # a blank line is skipped
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join("" if not job else json.dumps(job) for job in lines) + "\n")
    r = qinfer(fleet_url, "submit", "--file", str(jobs), "--model", MODEL)
    assert r.returncode == 0, r.stderr
    assert "submitted: 100%" in r.stderr and "7/7" in r.stderr          # the progress bar
    ids = r.stdout.split()
    client = Client(settings=Settings(redis_url=fleet_url))
    results = [client.wait(job_id, timeout=60) for job_id in ids]
    assert [res.metadata["i"] for res in results] == list(range(7))
    assert all(res.status.value == "succeeded" and res.model == MODEL for res in results)


def test_submit_file_with_a_bad_line_writes_nothing(fleet_url, tmp_path):
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"model": "m", "prompt": "fine"}) + "\n"
                    + json.dumps({"model": "m", "prompt": "bad", "sampling": {"top_p": 2}}) + "\n")
    before = job_keys(fleet_url)
    r = qinfer(fleet_url, "submit", "--file", str(jobs))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{jobs} line 2: invalid JobRequest: sampling.top_p" in r.stderr
    assert job_keys(fleet_url) == before
    r = qinfer(fleet_url, "submit", "--file", "-", stdin="not json\n")
    assert r.returncode == 1 and "- line 1: not JSON" in r.stderr
