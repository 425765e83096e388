"""What it costs to hand one step's plan to the tensor-parallel follower ranks.

    python bench/bench_tp_plan.py [--batch-sizes 8 64 256 --followers 1 3 --steps 200]

A decode SchedulerOutput of B running requests (one in 16 gets a new block, one new request of
512 prompt tokens) travels the way the executor sends it: compacted, pickled once, written to one
pipe per follower, read, unpickled and expanded there; the follower answers one byte so the time is a full round
trip. "gloo" does the same with torch.distributed.broadcast_object_list on a gloo group (the
alternative transport). Prints a table (median microseconds per step) and writes
bench/results/tp_plan.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import pickle
import statistics
import time
from pathlib import Path

import torch.distributed as dist

from qinfer.contracts.scheduler_output import CachedRequestData, NewRequestData, SchedulerOutput
from qinfer.executor.multiproc_executor import _compact, _expanded
from qinfer.sampling_params import SamplingParams

RESULTS = Path(__file__).parent / "results" / "tp_plan.json"


def decode_plan(batch_size: int) -> SchedulerOutput:
    cached = [CachedRequestData(f"req-{i}", [1000 + i] if i % 16 == 0 else [], 300 + i) for i in range(batch_size)]
    new = [NewRequestData("new-0", list(range(512)), [], SamplingParams(temperature=0.7, seed=1), list(range(32)), 0)]
    tokens = {c.req_id: 1 for c in cached} | {"new-0": 512}
    return SchedulerOutput(new_requests=new, cached_requests=cached, num_scheduled_tokens=tokens)


def pipe_follower(pipe) -> None:
    while (message := pickle.loads(pipe.recv_bytes())) is not None:
        _expanded(message[1][0])
        pipe.send_bytes(b"k")


def gloo_follower(rank: int, world_size: int, port: int, steps: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    for _ in range(steps):
        message = [None]
        dist.broadcast_object_list(message, src=0)
        _expanded(message[0][0])
    dist.destroy_process_group()


def time_pipes(plan, num_followers: int, steps: int) -> float:
    ctx = mp.get_context("spawn")
    pipes = [ctx.Pipe() for _ in range(num_followers)]
    procs = [ctx.Process(target=pipe_follower, args=(child,)) for _, child in pipes]
    for p in procs:
        p.start()
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        message = pickle.dumps(("execute_model_follower", (_compact(plan), [7] * 256)),
                               protocol=pickle.HIGHEST_PROTOCOL)
        for parent, _ in pipes:
            parent.send_bytes(message)
        for parent, _ in pipes:
            parent.recv_bytes()
        samples.append(time.perf_counter() - start)
    for parent, _ in pipes:
        parent.send_bytes(pickle.dumps(None))
    for p in procs:
        p.join()
    return statistics.median(samples) * 1e6


def time_gloo(plan, num_followers: int, steps: int, port: int) -> float:
    ctx = mp.get_context("spawn")
    world_size = num_followers + 1
    procs = [ctx.Process(target=gloo_follower, args=(r, world_size, port, steps)) for r in range(1, world_size)]
    for p in procs:
        p.start()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=world_size)
    samples = []
    for _ in range(steps):
        start = time.perf_counter()
        dist.broadcast_object_list([(_compact(plan), [7] * 256)], src=0)
        samples.append(time.perf_counter() - start)
    dist.destroy_process_group()
    for p in procs:
        p.join()
    return statistics.median(samples) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 64, 256])
    parser.add_argument("--followers", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    rows, port = [], 29517
    for num_followers in args.followers:
        for batch_size in args.batch_sizes:
            plan = decode_plan(batch_size)
            port += 1
            rows.append({"followers": num_followers, "batch_size": batch_size,
                         "plan_bytes": len(pickle.dumps(_compact(plan), protocol=pickle.HIGHEST_PROTOCOL)),
                         "pipe_us": round(time_pipes(plan, num_followers, args.steps), 1),
                         "gloo_us": round(time_gloo(plan, num_followers, args.steps, port), 1)})
            print("  ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
