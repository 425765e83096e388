"""Queue benchmarks: enqueue rate, and the fleet's overhead over in-process LLM.generate.

    python bench/bench_queue.py [--jobs 1000] [--model DIR] [--device cpu]

Prints a table and writes bench/results/queue.json. Everything runs in one go
on a private Redis: the ratio compares two runs of the same jobs on this machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.fleet import Fleet

SUBJECTS = ["The quick brown fox", "A small robot", "The river", "My old teacher", "Every engine", "Our garden"]


def prompts(n: int) -> list[str]:
    return [f"{SUBJECTS[i % len(SUBJECTS)]} and job {i}" for i in range(n)]


def sampling(max_tokens: int) -> dict:
    return {"temperature": 0, "max_tokens": max_tokens, "ignore_eos": True}


def enqueue_rate(client: Client, n: int) -> float:
    jobs = [{"model": "bench-enqueue", "prompt": p, "sampling": sampling(16)} for p in prompts(n)]
    start = time.perf_counter()
    client.submit_many(jobs)
    return n / (time.perf_counter() - start)


def in_process(model: str, device: str, engine_kwargs: dict, n: int, max_tokens: int) -> float:
    from qinfer import LLM, SamplingParams

    llm = LLM(model, device=device, **engine_kwargs)
    llm.generate(prompts(8), SamplingParams(**sampling(max_tokens)), use_tqdm=False)    # warm up
    start = time.perf_counter()
    llm.generate(prompts(n), SamplingParams(**sampling(max_tokens)), use_tqdm=False)
    return time.perf_counter() - start


def through_fleet(client: Client, name: str, n: int, max_tokens: int) -> float:
    client.wait(client.submit(model=name, prompt="warm up", sampling=sampling(max_tokens)), timeout=120)
    start = time.perf_counter()
    ids = client.submit_many([{"model": name, "prompt": p, "sampling": sampling(max_tokens)} for p in prompts(n)])
    for job_id in ids:
        client.wait(job_id, timeout=600)
    return time.perf_counter() - start


def per_job_overhead(client: Client, name: str, n: int) -> tuple[list[float], list[float]]:
    """One job at a time (an idle fleet): submit -> engine admission, engine finish -> result visible."""
    admission, visible = [], []
    for p in prompts(n):
        job_id = client.submit(model=name, prompt=p, sampling=sampling(4))
        result = client.wait(job_id, timeout=60)
        seen = time.time()
        admission.append(result.timings.started_at - result.timings.queued_at)
        visible.append(seen - result.timings.finished_at)
    return admission, visible


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--enqueue-jobs", type=int, default=20000)
    ap.add_argument("--model", help="model directory (default: the tiny demo model)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "queue.json"))
    args = ap.parse_args(argv)
    from qinfer.cli import make_demo_model

    model = args.model or str(make_demo_model())
    engine_kwargs = {"num_kv_blocks": 4096, "max_num_seqs": 256}
    worker_args = ("--served-model-name", "bench", "--device", args.device,
                   "--num-kv-blocks", "4096", "--max-num-seqs", "256")
    with EmbeddedRedis() as server:
        client = Client(settings=Settings(redis_url=server.url, max_queued_jobs=10**7))
        rate = enqueue_rate(client, args.enqueue_jobs)
        t_local = in_process(model, args.device, engine_kwargs, args.jobs, args.max_tokens)
        fleet = Fleet(model, server.url, 1, worker_args=worker_args, env={"QINFER_LOG_LEVEL": "WARNING"})
        fleet.start().wait_ready()
        try:
            t_fleet = through_fleet(client, "bench", args.jobs, args.max_tokens)
            admission, visible = per_job_overhead(client, "bench", 200)
        finally:
            fleet.stop()
    report(args, rate, t_local, t_fleet, admission, visible)


def report(args, rate, t_local, t_fleet, admission, visible) -> None:
    ms = lambda xs, q: 1000 * statistics.quantiles(xs, n=100)[q - 1]
    figures = {
        "enqueue_jobs_per_s": round(rate),
        "jobs": args.jobs, "max_tokens": args.max_tokens, "device": args.device,
        "in_process_s": round(t_local, 3), "fleet_s": round(t_fleet, 3),
        "fleet_over_in_process": round(t_fleet / t_local, 3),
        "submit_to_admission_ms_p50": round(ms(admission, 50), 3),
        "submit_to_admission_ms_p99": round(ms(admission, 99), 3),
        "finish_to_visible_ms_p50": round(ms(visible, 50), 3),
        "finish_to_visible_ms_p99": round(ms(visible, 99), 3),
    }
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
