"""Queue benchmarks: enqueue rate, and the fleet's overhead over in-process LLM.generate.

    python bench/bench_queue.py [--jobs 1000] [--model DIR] [--device cpu] [--threads N] [--repeats 3]

Prints a table and writes bench/results/queue.json. Everything runs in one go
on a private Redis: the ratio compares two runs of the same jobs on this machine.
Like with like: the in-process LLM and the one worker get the same engine settings
(ENGINE_SETTINGS) and the same torch intra-op thread count (--threads, default torch's
own default, i.e. one per core); both are warmed up with the same 8 jobs, and each side
counts its best of --repeats runs (noise on a shared machine only adds). The fleet's time runs from
submit_many to the last result read by Client.wait, one job after the other; on a small
CPU machine the client and redis-server share the cores with the worker.
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

ENGINE_SETTINGS = {"num_kv_blocks": 4096, "max_num_seqs": 256}     # the rest: EngineConfig defaults
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


def in_process(model: str, device: str, threads: int, n: int, max_tokens: int, repeats: int) -> float:
    import torch

    from qinfer import LLM, SamplingParams

    torch.set_num_threads(threads)
    llm = LLM(model, device=device, **ENGINE_SETTINGS)
    llm.generate(prompts(8), SamplingParams(**sampling(max_tokens)), use_tqdm=False)    # warm up
    return best_of(repeats, lambda: llm.generate(prompts(n), SamplingParams(**sampling(max_tokens)),
                                                 use_tqdm=False))


def through_fleet(client: Client, name: str, n: int, max_tokens: int, repeats: int) -> float:
    def run(jobs: list[str]) -> None:
        ids = client.submit_many([{"model": name, "prompt": p, "sampling": sampling(max_tokens)} for p in jobs])
        for job_id in ids:
            client.wait(job_id, timeout=600)

    run(prompts(8))     # warm up, as in-process
    return best_of(repeats, lambda: run(prompts(n)))


def best_of(repeats: int, run) -> float:
    """The fastest of `repeats` timed runs: a shared CPU machine's noise only ever adds time."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


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
    ap.add_argument("--threads", type=int, help="torch threads, in-process and in the worker (default: torch's)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each side; the best counts")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "queue.json"))
    args = ap.parse_args(argv)
    from qinfer.testing.demo_model import make_demo_model

    model = args.model or str(make_demo_model())
    args.threads = args.threads or default_threads()
    worker_args = ("--served-model-name", "bench", "--device", args.device,
                   *(x for k, v in ENGINE_SETTINGS.items() for x in (f"--{k.replace('_', '-')}", str(v))))
    with EmbeddedRedis() as server:
        client = Client(settings=Settings(redis_url=server.url, max_queued_jobs=10**7), require_live_model=False)
        rate = enqueue_rate(client, args.enqueue_jobs)
        t_local = in_process(model, args.device, args.threads, args.jobs, args.max_tokens, args.repeats)
        # OMP_NUM_THREADS sets the worker's torch thread count, as set_num_threads did in-process
        env = {"QINFER_LOG_LEVEL": "WARNING", "OMP_NUM_THREADS": str(args.threads)}
        fleet = Fleet(model, server.url, 1, worker_args=worker_args, env=env)
        fleet.start().wait_ready()
        try:
            t_fleet = through_fleet(client, "bench", args.jobs, args.max_tokens, args.repeats)
            admission, visible = per_job_overhead(client, "bench", 200)
        finally:
            fleet.stop()
    report(args, rate, t_local, t_fleet, admission, visible)


def default_threads() -> int:
    import torch

    return torch.get_num_threads()


def report(args, rate, t_local, t_fleet, admission, visible) -> None:
    ms = lambda xs, q: 1000 * statistics.quantiles(xs, n=100)[q - 1]
    figures = {
        "enqueue_jobs_per_s": round(rate),
        "jobs": args.jobs, "max_tokens": args.max_tokens, "device": args.device,
        "torch_threads": args.threads, "repeats": args.repeats,
        "in_process_s": round(t_local, 3), "fleet_s": round(t_fleet, 3),
        "fleet_over_in_process": round(t_fleet / t_local, 3),
        "submit_to_admission_ms_p50": round(ms(admission, 50), 3),
        "submit_to_admission_ms_p99": round(ms(admission, 99), 3),
        "finish_to_visible_ms_p50": round(ms(visible, 50), 3),
        "finish_to_visible_ms_p99": round(ms(visible, 99), 3),
    }
    write_figures(figures, args.out)


def write_figures(figures: dict, out: str) -> None:
    """Print `figures` as a two-column table and write them as JSON to `out`."""
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
