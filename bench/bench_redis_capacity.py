"""What one Redis holds: a job's whole queue life against one redis-server, no engine.

    python bench/bench_redis_capacity.py [--jobs 20000] [--batch 256] [--stream]

Each round submits a batch (Client.submit_many), pulls it as a worker does (Consumer.pull:
PULL + START) and writes every result (ResultWriter.flush: one MULTI/EXEC with a FINISH per
job, plus the token-delta XADDs of streamed jobs when --stream). Redis's own CPU time per
job (INFO cpu) gives the jobs/s one Redis core sustains, whatever the Python clients cost;
INFO commandstats gives the commands per job. Prints a table, writes
bench/results/redis_capacity.json.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import redis

from qinfer.client import Client
from qinfer.config import Settings
from qinfer.embedded_redis import EmbeddedRedis
from qinfer.queue.consumer import Consumer
from qinfer.queue.keys import Keys
from qinfer.queue.records import delta_fields, output_json
from qinfer.queue.writer import Final, ResultWriter
from qinfer.schema import Completion, Usage

MODEL = "capacity"
DELTAS_PER_JOB = 16        # streamed jobs: one events XADD per engine step that made a token


def server_counters(r: redis.Redis) -> tuple[float, int]:
    cpu = r.info("cpu")
    calls = sum(v["calls"] for k, v in r.info("commandstats").items() if k.startswith("cmdstat_"))
    return cpu["used_cpu_user"] + cpu["used_cpu_sys"], calls


def one_round(client: Client, consumer: Consumer, writer: ResultWriter, batch: int, stream: bool) -> int:
    client.submit_many([{"model": MODEL, "prompt": f"job {i}", "stream": stream,
                         "sampling": {"max_tokens": DELTAS_PER_JOB}} for i in range(batch)])
    deliveries = consumer.pull(batch)
    output = output_json([Completion(text="x" * 64, token_ids=list(range(DELTAS_PER_JOB)))],
                         Usage(prompt_tokens=3, completion_tokens=DELTAS_PER_JOB, total_tokens=3 + DELTAS_PER_JOB))
    if stream:
        for step in range(DELTAS_PER_JOB):
            writer.flush([(d.job_id, delta_fields(0, "x", [step])) for d in deliveries], [])
    writer.flush([], [Final(d, "succeeded", {"output": output}) for d in deliveries])
    return len(deliveries)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--stream", action="store_true", help="also stream 16 token deltas per job")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "redis_capacity.json"))
    args = ap.parse_args(argv)
    with EmbeddedRedis() as server:
        settings = Settings(redis_url=server.url, max_queued_jobs=10**7, max_queued_tokens=10**12,
                            require_live_model=False)   # no worker runs: the bench plays its queue side
        client, r = Client(settings=settings), redis.Redis.from_url(server.url)
        consumer = Consumer(r, Keys(), MODEL, "bench", settings)
        consumer.ensure_groups()
        writer = ResultWriter(r, Keys(), "bench", settings)
        one_round(client, consumer, writer, args.batch, args.stream)          # warm up scripts
        cpu0, calls0 = server_counters(r)
        start, done = time.perf_counter(), 0
        while done < args.jobs:
            done += one_round(client, consumer, writer, min(args.batch, args.jobs - done), args.stream)
        wall = time.perf_counter() - start
        cpu1, calls1 = server_counters(r)
    cpu_per_job = (cpu1 - cpu0) / done
    figures = {"jobs": done, "batch": args.batch, "streamed": args.stream,
               "wall_jobs_per_s (one Python client and worker)": round(done / wall),
               "redis_cpu_us_per_job": round(cpu_per_job * 1e6, 1),
               "jobs_per_s_per_redis_core": round(1 / cpu_per_job) if cpu_per_job else None,
               "redis_commands_per_job": round((calls1 - calls0) / done, 1)}
    width = max(map(len, figures))
    for key, value in figures.items():
        print(f"{key.ljust(width)}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
