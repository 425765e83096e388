"""The main job, end to end: `python -m qinfer.demo` (or `qinfer demo`, `make demo`).

Starts an embedded Redis and a fleet of workers on the tiny self-made model,
submits a batch of jobs with a progress bar, prints the answers and stops the fleet.
"""
from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from qinfer.client import Client
from qinfer.config import Settings, get_settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.fleet import Fleet, fleet_webhook_secret
from qinfer.testing.demo_model import make_demo_model

PROMPTS = ["The quick brown fox", "A small robot", "My old teacher", "The river", "Every engine",
           "The tired scheduler", "Our garden", "The red kettle", "A curious cat", "The night train"]


def run_batch(client: Client, model: str, num_jobs: int, max_tokens: int) -> list:
    jobs = [{"model": model, "prompt": f"{PROMPTS[i % len(PROMPTS)]}", "priority": i % 3,
             "sampling": {"temperature": 0.8, "top_p": 0.95, "seed": i, "max_tokens": max_tokens},
             "metadata": {"n": i}} for i in range(num_jobs)]
    ids = client.submit_many(jobs)
    return [client.wait(job_id, timeout=300) for job_id in tqdm(ids, desc="jobs", unit="job")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=24)
    args = ap.parse_args(argv)
    model_dir = make_demo_model()
    secret, _ = fleet_webhook_secret(get_settings())
    with EmbeddedRedis() as server:
        print(f"Redis on {server.url}; starting {args.workers} workers on {model_dir.name} "
              "and a callbacks worker ...", flush=True)
        fleet = Fleet(model_dir, server.url, args.workers, env={"QINFER_LOG_LEVEL": "WARNING"},
                      webhook_secret=secret)
        fleet.start().wait_ready()
        try:
            start = time.perf_counter()
            results = run_batch(Client(settings=Settings(redis_url=server.url)), model_dir.name,
                                args.jobs, args.max_tokens)
            elapsed = time.perf_counter() - start
        finally:
            codes = fleet.stop()
    for r in results:
        print(f"[{r.metadata['n']:>3} {r.status.value} by {r.worker}] {PROMPTS[r.metadata['n'] % len(PROMPTS)]}"
              f" ->{r.text!r}")
    print(f"{len(results)} jobs in {elapsed:.2f}s on {args.workers} workers; fleet stopped (exit codes {codes})")
    return 0 if all(r.status.value == "succeeded" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
