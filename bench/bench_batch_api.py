"""Batch API throughput: a batch of N lines through the gateway vs the same jobs via Client.submit_many.

    python bench/bench_batch_api.py [--lines 2000] [--workers 2] [--max-tokens 16] [--repeats 2] [--model DIR]

Prints a table and writes bench/results/batch_api.json. One private Redis, N CPU workers
(one torch thread each), one gateway process (`qinfer serve`), all on this machine.
Both sides run the very same jobs (the batch's own line -> job mapping, under another
batch id so no idempotency key is shared), alternately, best of --repeats each:
- direct: Client.submit_many, then Client.wait on every job;
- batch: upload the JSONL file, create the batch, poll GET /v1/batches/{id} every POLL_S
  until `completed` (the output file written): enqueue, progress tracking and
  finalizing included. `lines_done_s` is when request_counts first showed every line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from tempfile import TemporaryDirectory

from bench_queue import write_figures     # bench/ is on the path when run as a script
from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis, free_port
from qinfer.fleet import Fleet
from qinfer.gateway.batch_lines import line_job, parse_input
from qinfer.gateway.commands import GatewayAPI

MODEL = "bench"
SUBJECTS = ["The quick brown fox", "A small robot", "The river", "My old teacher", "Every engine", "Our garden"]
WORKER_ARGS = ("--served-model-name", MODEL, "--num-kv-blocks", "4096", "--max-num-seqs", "256")
POLL_S = 0.5              # how often the benchmark's client looks at the batch
ENV = {"QINFER_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": "1", "QINFER_MAX_QUEUED_JOBS": "1000000"}


def batch_lines(n: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/completions",
             "body": {"model": MODEL, "prompt": f"{SUBJECTS[i % len(SUBJECTS)]} and job {i}",
                      "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}} for i in range(n)]


def jsonl(lines: list[dict]) -> bytes:
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def direct(client: Client, raw: bytes, settings: Settings, run: int) -> float:
    """The batch's jobs, built by its own line mapping, through submit_many + wait."""
    parsed = parse_input(io.BytesIO(raw), "/v1/completions", settings)
    batch = {"id": f"direct-{run}", "priority": settings.batch_priority, "owner": ""}
    jobs = [line_job(line, batch) for line in parsed.lines]
    start = time.perf_counter()
    for job_id in client.submit_many(jobs):
        client.wait(job_id, timeout=1200)
    return time.perf_counter() - start


def through_batch(api: GatewayAPI, path: Path) -> tuple[float, float]:
    """(seconds until every line was counted, seconds until `completed`)."""
    start = time.perf_counter()
    batch_id = api.call("POST", "/v1/batches", {"input_file_id": api.upload(path, "batch")["id"],
                                                "endpoint": "/v1/completions"})["id"]
    lines_done = None
    while True:
        batch = api.call("GET", f"/v1/batches/{batch_id}")
        counts = batch["request_counts"]
        if lines_done is None and counts["total"] and counts["completed"] + counts["failed"] == counts["total"]:
            lines_done = time.perf_counter() - start
        if batch["status"] in ("completed", "failed", "expired", "cancelled"):
            assert batch["status"] == "completed" and counts["failed"] == 0, batch
            total = time.perf_counter() - start
            return lines_done or total, total
        time.sleep(POLL_S)


def start_gateway(redis_url: str, files_dir: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([sys.executable, "-m", "qinfer.cli", "serve", "--redis", redis_url,
                                "--port", str(port), "--files-dir", files_dir],
                               env={**os.environ, **ENV})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return process, url
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise TimeoutError("gateway not healthy")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--model", help="model directory (default: the tiny demo model)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "batch_api.json"))
    args = ap.parse_args(argv)
    from qinfer.testing.demo_model import make_demo_model

    model = args.model or str(make_demo_model())
    raw = jsonl(batch_lines(args.lines, args.max_tokens))
    with EmbeddedRedis() as server, TemporaryDirectory() as tmp:
        settings = Settings(redis_url=server.url, max_queued_jobs=10**6)
        client = Client(settings=settings)
        (path := Path(tmp) / "lines.jsonl").write_bytes(raw)
        fleet = Fleet(model, server.url, args.workers, worker_args=WORKER_ARGS, env=ENV).start()
        gateway, url = start_gateway(server.url, str(Path(tmp) / "files"))
        try:
            fleet.wait_ready()
            api = GatewayAPI(url, None)
            (warm := Path(tmp) / "warm.jsonl").write_bytes(jsonl(batch_lines(64, args.max_tokens)))
            direct(client, warm.read_bytes(), settings, -1)          # warm up both sides
            through_batch(api, warm)
            direct_s, batch_s = [], []
            for run in range(args.repeats):
                direct_s.append(direct(client, raw, settings, run))
                batch_s.append(through_batch(api, path))
        finally:
            gateway.terminate()
            gateway.wait(timeout=30)
            fleet.stop()
    report(args, direct_s, batch_s)


def report(args, direct_runs: list[float], batch_runs: list[tuple[float, float]]) -> None:
    direct_s = min(direct_runs)
    lines_done_s, batch_s = min(batch_runs, key=lambda run: run[1])
    figures = {
        "lines": args.lines, "workers": args.workers, "max_tokens": args.max_tokens, "repeats": args.repeats,
        "direct_submit_many_s": round(direct_s, 3), "batch_api_s": round(batch_s, 3),
        "batch_lines_done_s": round(lines_done_s, 3),
        "direct_jobs_per_s": round(args.lines / direct_s, 1), "batch_jobs_per_s": round(args.lines / batch_s, 1),
        "batch_over_direct": round(batch_s / direct_s, 3),
        "direct_runs_s": [round(t, 2) for t in direct_runs], "batch_runs_s": [round(t, 2) for _, t in batch_runs],
    }
    write_figures(figures, args.out)


if __name__ == "__main__":
    main()
