"""Arrival-rate mode through the fleet (issue 13): varied jobs arrive as a Poisson process.

    python bench/bench_arrivals.py --device cuda [--rates 4,8,16,24,32] [--duration-s 40] [--out DIR]
    python bench/bench_arrivals.py --device cpu --rates 1,2 --duration-s 4       (smoke)

One `qinfer worker` on an embedded Redis (engine settings: its defaults unless given, as in
bench_varied.py). Per rate, rate * duration_s jobs of the varied workload are submitted one
by one at exponential gaps (a submitting thread), each with stream=True; the main thread
reads every open job's event stream in one XREAD loop and stamps each delta when it arrives,
so every figure includes the queue, the worker's Redis writes and the client's reads:
  time to first token   first delta - submit
  time per output token (last delta - first delta) / (output tokens - 1), jobs of >= 2 tokens
  queue wait            the job's started_at - queued_at (the worker's admission)
  end-to-end            end event - submit
and throughput (output tokens over first submit to last end), and the Triton kernels the
worker compiled during the rate, by name (it starts on a fresh cache: a compile mid-traffic
stalls every job of the worker). Each rate drains before the next. A rate is saturated when jobs
finish slower than they arrive (the queue grows).
Prints a table (p50 / p99) and writes bench_arrivals.json to --out.
"""
from __future__ import annotations

import argparse
import os
import queue
import random
import tempfile
import threading
import time
from pathlib import Path

from bench_varied import add_shared_args, model_and_vocab, one_worker_fleet, parse_shared, save
from varied_workload import Job, varied_jobs


class Tracked:
    def __init__(self, job_id: str, job: Job, submitted: float):
        self.job_id, self.job, self.submitted = job_id, job, submitted
        self.first = self.last = self.ended = None
        self.num_tokens = 0


def submit_at_poisson_times(client, jobs: list[Job], rate: float, seed: int, out: queue.Queue) -> None:
    rng, start, due = random.Random(seed), time.time(), 0.0
    for job in jobs:
        due += rng.expovariate(rate)
        time.sleep(max(0.0, start + due - time.time()))
        job_id = client.submit(model="bench", prompt_token_ids=job.prompt_token_ids, sampling=job.sampling(),
                               stream=True)
        out.put(Tracked(job_id, job, time.time()))
    out.put(None)


def watch_streams(client, submitted: queue.Queue) -> list[Tracked]:
    """Stamp every job's deltas as they arrive, until every submitted job has ended."""
    from qinfer.queue.records import parse_event

    open_jobs: dict[bytes, Tracked] = {}
    last_ids: dict[bytes, str] = {}
    done: list[Tracked] = []
    submitting = True
    while submitting or open_jobs:
        while True:
            try:
                tracked = submitted.get_nowait()
            except queue.Empty:
                break
            if tracked is None:
                submitting = False
                continue
            key = client.keys.job_events(tracked.job_id).encode()
            open_jobs[key], last_ids[key] = tracked, "0-0"
        if not open_jobs:
            time.sleep(0.005)
            continue
        for key, entries in client.redis.xread(last_ids, block=50, count=1000) or []:
            tracked, now = open_jobs[key], time.time()
            for last_ids[key], fields in entries:
                kind, value = parse_event(fields)
                if kind == "end":
                    tracked.ended = now
                    done.append(open_jobs.pop(key))
                    del last_ids[key]
                    break
                if value.token_ids:
                    tracked.first = tracked.first or now
                    tracked.last, tracked.num_tokens = now, tracked.num_tokens + len(value.token_ids)
    return done


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run_rate(client, jobs: list[Job], rate: float, seed: int) -> dict:
    submitted: queue.Queue = queue.Queue()
    submitter = threading.Thread(target=submit_at_poisson_times, args=(client.__class__(settings=client.settings),
                                                                       jobs, rate, seed, submitted))
    submitter.start()
    done = watch_streams(client, submitted)
    submitter.join()
    timings = [client.get(t.job_id).timings for t in done]
    assert all(t.num_tokens == t.job.max_tokens for t in done), "every job streams max_tokens tokens"
    ms = lambda xs, q: 1e3 * percentile(xs, q)                       # noqa: E731
    ttft = [t.first - t.submitted for t in done]
    tpot = [(t.last - t.first) / (t.num_tokens - 1) for t in done if t.num_tokens > 1]
    wait = [x.started_at - x.queued_at for x in timings]
    e2e = [t.ended - t.submitted for t in done]
    span = max(t.ended for t in done) - min(t.submitted for t in done)
    offered_span = max(t.submitted for t in done) - min(t.submitted for t in done)
    return dict(rate=rate, jobs=len(done), output_tok_s=sum(t.num_tokens for t in done) / span,
                finished_jobs_per_s=len(done) / span, saturated=span > 1.2 * offered_span + percentile(e2e, 0.5),
                **{f"{name}_ms_p{q}": ms(xs, q / 100) for name, xs in
                   (("ttft", ttft), ("tpot", tpot), ("queue_wait", wait), ("e2e", e2e)) for q in (50, 99)})


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_shared_args(p)
    p.add_argument("--rates", default="4,8,16,24,32", help="jobs per second, one run each")
    p.add_argument("--duration-s", type=float, default=40.0, help="arrivals last this long per rate")
    return parse_shared(p, argv)


def compiled_folders(cache_dir: Path) -> set[Path]:
    """Triton's cache folders so far in cache_dir (one per compiled kernel or launcher)."""
    return set(cache_dir.iterdir()) if cache_dir.is_dir() else set()


def kernel_names(folders: set[Path]) -> list[str]:
    """What these cache folders hold: each compiled kernel's name (its metadata file's stem),
    else the folder's first file (a launcher stub)."""
    names = []
    for folder in folders:
        files = sorted(f.name for f in folder.iterdir())
        metadata = [n[:-len(".json")] for n in files if n.endswith(".json") and not n.startswith("__grp__")]
        names.append(metadata[0] if metadata else (files[0] if files else folder.name))
    return sorted(names)


def run_rates(args, model_dir: str, vocab_size: int, cache_dir: Path, results: dict) -> None:
    with one_worker_fleet(args, model_dir) as client:
        run_rate(client, varied_jobs(4, vocab_size, seed=999, scale=args.scale), 4.0, 999)   # warm up
        for i, rate in enumerate(float(r) for r in args.rates.split(",")):
            jobs = varied_jobs(max(1, round(rate * args.duration_s)), vocab_size, seed=args.seed + i,
                               content_seed=args.seed + 1000 * (i + 1), scale=args.scale)
            before = compiled_folders(cache_dir)
            row = run_rate(client, jobs, rate, args.seed + i)
            new = compiled_folders(cache_dir) - before
            results["rates"].append(dict(row, kernel_compiles=len(new), kernels_compiled=kernel_names(new)))
            save(results, args.out, "bench_arrivals.json")


def main(argv=None) -> dict:
    args = parse_args(argv)
    model_dir, vocab_size = model_and_vocab(args)
    results = dict(device=args.device, model_dir=model_dir, args={k: str(v) for k, v in vars(args).items()}, rates=[])
    # The worker compiles into a fresh Triton cache, so each rate's row says how many kernels it
    # compiled mid-traffic (a compile stops the worker's every job for a moment).
    with tempfile.TemporaryDirectory(prefix="qinfer-triton-") as cache:
        os.environ["TRITON_CACHE_DIR"] = cache
        run_rates(args, model_dir, vocab_size, Path(cache), results)
    report(results)
    return results


def report(r: dict) -> None:
    print("| jobs/s | jobs | out tok/s | finished/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms "
          "| queue wait p50 / p99 ms | e2e p50 / p99 s | saturated | kernels compiled |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    for x in r["rates"]:
        names = f" ({', '.join(x['kernels_compiled'])})" if x["kernels_compiled"] else ""
        compiled = f"{x['kernel_compiles']}{names}"
        print(f"| {x['rate']:g} | {x['jobs']} | {x['output_tok_s']:.0f} | {x['finished_jobs_per_s']:.2f} "
              f"| {x['ttft_ms_p50']:.0f} / {x['ttft_ms_p99']:.0f} | {x['tpot_ms_p50']:.1f} / {x['tpot_ms_p99']:.1f} "
              f"| {x['queue_wait_ms_p50']:.0f} / {x['queue_wait_ms_p99']:.0f} "
              f"| {x['e2e_ms_p50'] / 1e3:.2f} / {x['e2e_ms_p99'] / 1e3:.2f} | {'yes' if x['saturated'] else 'no'} "
              f"| {compiled} |")


if __name__ == "__main__":
    main()
